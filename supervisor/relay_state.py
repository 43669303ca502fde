"""What the connections of one relay share: the tenant, its policy, and the policy's decisions.

A relay's connections ask ``RelayState.decide`` for the plan of each request line; decisions are
kept per policy object, so a reload (a new policy object) starts a fresh cache.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.policy import Plan, Refusal, TenantPolicy
from supervisor.relay_http import Head

OPEN_PLAN = Plan("", None)  # what every request gets when no policy is set
_DECISIONS_KEPT = 512  # distinct request lines whose policy decision is remembered


class RelayState:
    """What the connections of one relay share: the tenant, its policy, requests in flight."""

    def __init__(self, tenant: str, policy: Callable[[], TenantPolicy | None]) -> None:
        self.tenant = tenant
        self.policy = policy
        self.in_flight = 0  # requests forwarded whose response has not been passed on yet
        self._decided: TenantPolicy | None = None  # the policy the decisions below are from
        self._decisions: dict[tuple[str, bytes], Plan | Refusal] = {}

    def decide(self, head: Head) -> tuple[TenantPolicy | None, Plan | Refusal]:
        """The current policy and its decision on ``head``'s request line.

        ``check_head`` depends on the policy and the request line alone, and clients repeat
        the same few lines, so decisions are kept until the policy object changes (a reload).
        """
        policy = self.policy()
        if policy is None:
            return None, OPEN_PLAN
        if policy is not self._decided:
            self._decided, self._decisions = policy, {}
        key = (head.method, head.target)
        decision = self._decisions.get(key)
        if decision is None:
            decision = policy.check_head(head.method, head.target)
            if len(self._decisions) >= _DECISIONS_KEPT:
                self._decisions.clear()  # blob digests and model names make many lines
            self._decisions[key] = decision
        return policy, decision
