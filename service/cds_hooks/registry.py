"""The CDS services offered: one per PlanDefinition and hook of its named-event triggers, with discovery data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.engine.apply import CompiledPlan, Engine
from service.cds_hooks.prefetch import prefetch_templates

SUPPORTED_HOOKS = ("patient-view", "order-select", "order-sign")


@dataclass(frozen=True)
class Service:
    """A CDS service: the PlanDefinition it applies and what discovery says about it."""

    id: str
    hook: str
    plan: CompiledPlan
    prefetch: dict[str, str]

    def discovery(self) -> dict[str, Any]:
        resource = self.plan.resource
        entry: dict[str, Any] = {"hook": self.hook, "id": self.id, "title": resource.get("title", self.id),
                                 "description": resource.get("description", resource.get("title", self.id)),
                                 "prefetch": self.prefetch}
        if resource.get("usage"):
            entry["usageRequirements"] = resource["usage"]
        return entry


def hooks_of(plan: CompiledPlan) -> list[str]:
    """The named events that trigger the plan's top-level actions, in order of first appearance."""
    hooks: list[str] = []
    for action in plan.resource.get("action") or []:
        for trigger in action.get("trigger") or []:
            name = trigger.get("name")
            if trigger.get("type") == "named-event" and name in SUPPORTED_HOOKS and name not in hooks:
                hooks.append(name)
    return hooks


def build_services(engine: Engine, url_limit: int) -> dict[str, Service]:
    """Services keyed by id: ``{PlanDefinition id}-{hook}`` (stable, and unique per hook as the Sandbox needs)."""
    services: dict[str, Service] = {}
    for plan_id in sorted(engine.plans):
        plan = engine.plans[plan_id]
        templates = prefetch_templates(engine, plan, url_limit)
        for hook in hooks_of(plan):
            service = Service(f"{plan_id}-{hook}", hook, plan, templates)
            services[service.id] = service
    return services
