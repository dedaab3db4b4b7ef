"""Moving in and out: Maildir/mbox import into the mailbox store, Maildir export out of it."""
