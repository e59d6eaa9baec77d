"""The HTTP listener's own concerns, whatever the route: limits, strict headers, security headers."""
