"""Helpers shared by the tests: in-memory ports, fake clocks, reference CRCs, expected protocols.

- `ports`: Transports in memory (ScriptedPort in virtual time, SlowPort in real time).
- `clock`: fake clocks for code that takes a clock, and the engines' virtual clock.
- `crc`: CRC-16/MODBUS and CRC-16/CCITT-FALSE one bit at a time, from their definitions.
- `protocol`: `expected_protocol`, request/reply byte pairs an engine must produce exactly.
- `devices`: scripted devices written from the manuals (Modbus slave, US-300, framed device).
"""
