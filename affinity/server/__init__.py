"""The app-server side: the base class developers subclass."""
