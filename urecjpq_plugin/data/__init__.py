"""Dataset builders that turn files shipped with a host framework into another host's format."""
