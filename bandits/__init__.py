"""bandits: exploring policies (the LinUCB family), the online learner that updates them
from the event stream, and off-policy evaluation. Not built yet (issue #14)."""
