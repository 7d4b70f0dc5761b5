"""The Slack edge: the bolt app and its listeners, the Block Kit renderer, and every button's
action_id and value codec."""
