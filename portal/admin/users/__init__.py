"""Users of a practice: the admin's page to add people, change their role and deactivate them, and
the one-time set-password link a new account is sent (`/set-password/<token>`)."""
