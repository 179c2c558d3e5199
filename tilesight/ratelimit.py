"""Token buckets in Redis, shared by every API process, one per (budget, caller).

The bucket is refilled lazily inside one Lua script so concurrent requests from many
processes cannot overdraw it. Separate budgets (tiles, predictions, jobs) keep a burst
of panning from eating a caller's job submissions and the other way round.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

# KEYS[1] bucket; ARGV: rate per s, burst, now (s), cost. Returns {allowed, retry_after_ms}.
_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, wait}
"""


@dataclass(frozen=True)
class Budget:
    name: str
    rate_per_s: float
    burst: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str = "tilesight:rl") -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(_SCRIPT)

    async def hit(self, budget: Budget, caller: str, cost: int = 1) -> Decision:
        key = f"{self.prefix}:{budget.name}:{caller}"
        allowed, wait_ms = await self._script(
            keys=[key], args=[budget.rate_per_s, budget.burst, time.time(), cost]
        )
        return Decision(bool(allowed), max(1, math.ceil(int(wait_ms) / 1000)))
