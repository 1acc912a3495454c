"""The line side, torch-free: the model package (package, registry, runtime, tensorrt) and its wings.

line/    the runner: sources, station config, judging, failure log writer, webhook, MQTT, HTTP, metrics
plc/     the PLC handshake and its protocols (OPC UA, Modbus TCP)
store/   the failure store (SQLite/PostgreSQL), its outbox, reviews, statistics and exports
review/  the review station (web app)
"""
