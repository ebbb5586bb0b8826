"""Running as a system service: systemd notifications and watchdog, the status file, Prometheus metrics, and the
import of a configuration file dropped on the boot partition."""
