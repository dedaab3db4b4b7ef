"""The mailbox store: PostgreSQL models, migrations, the Database runner and repository functions.

Repository modules (domains, users, aliases, dkim, mailboxes, messages, spool,
dmarc) take a SQLAlchemy ``Session`` first and return plain dataclasses, so
their results can cross from the ``db`` thread pool back to the reactor.
"""
