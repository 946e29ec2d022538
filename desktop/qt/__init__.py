"""The desktop window (Qt): layout and wiring, the engine thread, the views."""
