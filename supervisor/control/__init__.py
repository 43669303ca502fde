"""The control plane: HTTP/1.1 + JSON on the daemon's unix socket.

``janus-supervisorctl`` does not import this package (it would pull in aiohttp and pydantic);
it speaks the same routes over a plain socket.
"""

from supervisor.control.api import SupervisorAPI
from supervisor.control.server import ControlServer, open_control_socket

__all__ = ["ControlServer", "SupervisorAPI", "open_control_socket"]
