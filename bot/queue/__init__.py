"""A durable, strictly per-chat-ordered work queue on Redis, shared by any number of workers.

Channels hand each update to :class:`Ingress` (durable once ``enqueue`` returns) and worker
processes run :class:`Worker` with a handler; see :mod:`bot.queue.worker` for the design and
README "Scaling out on Redis" for the key layout. Redis is the engine: streams with consumer
groups hold the jobs, Lua scripts make leases and de-duplication atomic.
"""

from bot.queue.ingress import Ingress
from bot.queue.job import Job, current_job
from bot.queue.keys import QueueKeys, partition_of
from bot.queue.worker import Worker

__all__ = ["Ingress", "Job", "QueueKeys", "Worker", "current_job", "partition_of"]
