"""The rollout part of `appliance fleet status`: recent decisions, pins, pending commands."""

from pathlib import Path
from typing import Any

from appliance.rollout.store import RolloutStore, Stage


def rollout_status(path: Path, recent: int = 5) -> dict[str, Any]:
    """Recent rollouts (newest first), pins and unsent operator commands; empty if none."""
    if not path.exists():
        return {"rollouts": [], "pins": {}, "pending_commands": []}
    store = RolloutStore(path, read_only=True)
    try:
        rows = store.all()[-recent:][::-1]
        return {
            "rollouts": [
                {
                    "global_version": r.version,
                    "round_id": r.round_id,
                    "stage": r.stage.value,
                    "canaries": list(r.canaries),
                    "reported": sorted(store.reports(r.version)),
                    "reason": r.reason,
                }
                for r in rows
            ],
            "pins": store.pins(),
            "pending_commands": [
                {"id": c.id, "action": c.action, "nodes": list(c.nodes), "version": c.version}
                for c in store.unsent_commands()
            ],
        }
    finally:
        store.close()


def render_rollout(status: dict[str, Any]) -> str:
    """Lines under the health table; rejected and rolled-back candidates show their reason."""
    lines = []
    for row in status["rollouts"]:
        stage = row["stage"]
        if stage == Stage.CANARY:
            waiting = [b for b in row["canaries"] if b not in row["reported"]]
            text = f"on canaries {', '.join(row['canaries'])}, waiting for {', '.join(waiting)}"
        else:
            text = f"{stage.replace('_', ' ')}: {row['reason']}"
        lines.append(f"ROLLOUT v{row['global_version']} ({row['round_id']}): {text}")
    for box, version in sorted(status["pins"].items()):
        lines.append(f"PINNED  {box} to v{version}")
    for command in status["pending_commands"]:
        target = ", ".join(command["nodes"]) or "fleet"
        version = "" if command["version"] is None else f" v{command['version']}"
        lines.append(f"QUEUED  #{command['id']} {command['action']}{version} for {target}")
    return "\n".join(lines)
