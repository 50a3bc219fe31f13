"""The host: delivers records to the core and checkpoints what it returns (the Faust app,
the transport, batching, the tables, the worker and its components). The only code that
knows Kafka and Faust; their private members are used in transport.py alone."""
