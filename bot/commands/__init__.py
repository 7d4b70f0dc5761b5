"""The `/tasks` commands, shared by Slack and the console: the grammar (`grammar`: what a user typed or
clicked, as a `Command`), the dispatcher (`dispatch`: one handler per `Kind`, answering with a `Reply`)
and the help (`help`)."""
