"""Wire contracts: the pydantic models of every event and command, and the topic registry."""

from schemas.events import EVENT_TYPES, event_type_of
from schemas.topics import TOPICS, TopicSpec, all_topic_names, topic

__all__ = ["EVENT_TYPES", "TOPICS", "TopicSpec", "all_topic_names", "event_type_of", "topic"]
