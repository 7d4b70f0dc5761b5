"""Worker control from Slack (issue 15): pool size, queue consumption, rate and time limits, shutdown,
and the read views of what workers hold (scheduled, reserved, revoked, registered).

`rules` and `pauses` are pure (what is allowed, what a reply means, what a pause looks like);
`actions` talks to the workers through Celery's remote control; `views` draws the answers; `store`
keeps who paused which queue.
"""
