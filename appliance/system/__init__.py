"""The process's life on a host: logging now; systemd notify, watchdog and signals later."""
