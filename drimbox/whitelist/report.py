"""`drimbox whitelist status` in words: the keeper's status as lines an operator reads."""

from __future__ import annotations


def format_status(status: dict[str, object]) -> str:
    """Human lines for `WhitelistKeeper.status()`; the first line says whether all is well."""
    if not status.get("in_force"):
        headline = "NO WHITELIST IN FORCE: every remote DRIMbox is refused"
    elif status.get("stale"):
        headline = f"STALE: the list in force was last confirmed {status.get('age_hours')} h ago " \
                   f"(alert above {status.get('max_age_hours')} h)"  # fmt: skip
    else:
        headline = "OK: whitelist in force and fresh"
    lines = [headline]
    if status.get("in_force"):
        lines += [
            f"  generated at   {status.get('generated_at')} (DateDeGeneration)",
            f"  confirmed at   {status.get('confirmed_at') or 'never by a download'}",
            f"  age            {status.get('age_hours')} h",
            f"  domains        {status.get('domains')}",
            f"  signer         {status.get('signer')}",
            f"  sha-256        {status.get('digest')}",
        ]
    lines += [
        f"  source         {status.get('url') or '(no whitelist.url: initial_file only)'}",
        f"  last attempt   {status.get('last_attempt') or 'never'} -> {status.get('last_result') or '-'}",
    ]
    if status.get("last_error"):
        lines.append(f"  last error     {status.get('last_error')}")
    return "\n".join(lines)
