from django.dispatch import Signal

# Sent after a Job row was written (status, progress, error). kwargs: job.
# The product connects it to its live-update hint; recovery itself stays UI-agnostic.
job_changed = Signal()
