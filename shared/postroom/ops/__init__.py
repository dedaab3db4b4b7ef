"""Operations: the CLI, the supervisor, private infrastructure, trace and import/export."""
