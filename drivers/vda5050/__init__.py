"""vda5050 driver."""
