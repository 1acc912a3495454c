"""The PLC handshake (protocol-independent) and its OPC UA and Modbus TCP servers."""
