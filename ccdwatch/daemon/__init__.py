"""The daemon's edges: the filesystem watcher and its loop, and systemd's notify protocol.

``watch``   observer -> queue -> one worker loop (start-up scan, periodic rescans, health checks)
``notify``  READY / STATUS / WATCHDOG / STOPPING over systemd's notify socket
"""
