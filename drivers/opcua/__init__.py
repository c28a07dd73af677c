"""opcua driver."""
