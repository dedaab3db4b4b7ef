"""Work queues on Redis Streams: envelopes, the stream client, consumers and the reconciler."""
