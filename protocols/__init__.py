"""Wire codecs, protocol engines and the serial transport.

Each protocol family has a map format (what a device profile says about its
registers, commands or frames) and an engine that turns map entries into bytes.
Nothing here knows about modalities or sessions.
"""
