"""The webhooks service: any HTTP endpoint or Slack channel hears of a report, signed and retried."""
