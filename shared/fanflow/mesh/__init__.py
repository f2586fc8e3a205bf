"""The mesh's shared shell logic: applying scheduler steps to stored runs, relaying the outbox."""
