"""kilowatch.mqtt: the MQTT 3.1.1 wire format, once: packet codec (``packets``) and topic names,
filters and matching (``topics``). Pure: the embedded broker and the simulator's client frame
their bytes with it; kilowatch's own intake uses paho-mqtt. Malformed input raises
:class:`ProtocolError`, re-exported here so a user of the codec needs no other kilowatch import.
"""

from kilowatch.errors import ProtocolError
from kilowatch.mqtt.packets import FrameReader, PacketType
from kilowatch.mqtt.topics import SubscriptionTree, topic_matches

__all__ = ["FrameReader", "PacketType", "ProtocolError", "SubscriptionTree", "topic_matches"]
