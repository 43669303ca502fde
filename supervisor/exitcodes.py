"""Exit codes of ``janus-supervisorctl``, one table shared by every command.

====  ===========  ===================================================================
code  name         meaning
====  ===========  ===================================================================
0     OK           done; for ``status`` and ``ready``: every tenant asked about is ready
1     FAILED       the action failed, or the daemon refused it for a reason other than
                   permission (for instance a tenant that is already stopping)
2     USAGE        wrong command line (click's usage errors) or unknown tenant
3     UNREACHABLE  the daemon cannot be reached: no socket, connection refused (stale
                   socket), no answer in time
4     NOT_READY    the tenant exists but is not ready: starting, provisioning, degraded,
                   backoff, stopping, stopped or failed
5     PERMISSION   permission denied on the control socket, or the daemon refused the
                   caller (HTTP 403)
====  ===========  ===================================================================

This module imports nothing: the CLI loads it on every run.
"""

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
NOT_READY = 4
PERMISSION = 5
