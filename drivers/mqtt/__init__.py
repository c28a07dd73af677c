"""MQTT scanner driver (``driver = "mqtt"``): ``config`` reads without paho, ``driver`` runs."""
