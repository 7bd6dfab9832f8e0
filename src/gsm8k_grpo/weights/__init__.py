"""Weight transports (trainer -> rollout engine) behind one interface, and GPU detection."""
