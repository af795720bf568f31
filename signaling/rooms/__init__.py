"""The rooms of this node (was ``signaling/hub.py``), one concern per module:

- ``registry``: ``RoomHub`` — which rooms and participants exist, joins, leaves,
  admissions, grace timers, the session clock, teardown;
- ``negotiation``: publish/subscribe offers and answers, ICE, the SFU's signals;
- ``broadcast``: roster, waiting room and events to participants;
- ``policy``: the lock, capacity and who receives whose media;
- ``state``: what a live room holds, and the ``Notifier`` interface to clients.
"""

from signaling.rooms.registry import RoomHub
from signaling.rooms.state import ENDED_AT_LEAST_SECONDS, LiveRoom, Notifier

__all__ = ["ENDED_AT_LEAST_SECONDS", "LiveRoom", "Notifier", "RoomHub"]
