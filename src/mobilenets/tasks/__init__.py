"""The tasks the MobileNet papers put on a phone, each plugged into the engine."""
