"""The online learner (``clickloop learn``): a consumer of the events topic that joins clicks
to impressions by ``request_id`` in a bounded event-time window, updates a LinUCB-family
policy in mini-batches, and checkpoints its state with the offsets it covers in one
atomically replaced file, so that a restart resumes exactly.

- ``join``: :class:`JoinWindow`, the bounded join, and its :class:`JoinCounters`;
- ``rows``: :class:`TrainingRows`, shown slots to features, rewards and examination weights;
- ``state``: the checkpoint file (:func:`read_state`, :func:`write_state`);
- ``sink``: :class:`LearnerSink`, the learner as an ingest sink, and :class:`LearnerConfig`.

Run one with :class:`ingest.consumer.EventConsumer`; learners sharing a consumer group split
the partitions, and Diag-LinUCB learners merge into one model by
:meth:`bandits.policies.DiagLinUCB.merged` of their ``policy_``.
"""

from bandits.learner.join import JoinCounters, JoinWindow
from bandits.learner.rows import TrainingRows
from bandits.learner.sink import LearnerConfig, LearnerLocked, LearnerSink
from bandits.learner.state import STATE_FILE, LearnerState, LearnerStateError, read_state

__all__ = ["STATE_FILE", "JoinCounters", "JoinWindow", "LearnerConfig", "LearnerLocked",
           "LearnerSink", "LearnerState", "LearnerStateError", "TrainingRows", "read_state"]
