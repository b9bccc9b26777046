"""The push path, read top down: a change in PostgreSQL reaches every socket (and event stream)
watching it.

    change_source      which listener (config change_source), and `announce` to switch:
      pg_listener      one LISTEN connection per process: batches of {execution id: seq}
      wal_listener     or one logical replication connection, decoding the triggers' WAL
                       messages (pgoutput reads them; decoding_preflight checks the server first;
                       synchronous_standby_names keeps it from ever serving as a synchronous standby);
                       both kept by kept_connection; either gathers its batches once it has been
                       behind for a while (backlog), and reads about once a millisecond while
                       changes keep coming thick (read_pace)
    subscription_hub   which sockets watch what; one read per batch (change_reader), one encoding
    messages           the wire format, built once per change
    socket_outbox      each socket's bounded queue, written at once or by a writer of its own
    frame_transport    the frames written to each socket's connection, its flow control and close
    ws_handlers        the two socket routes: handshake (socket_handshake), subscribe, read loop
    event_stream       a Server-Sent Events subscriber: the outbox writing SSE chunks to an HTTP response
    sse_handlers       the two event-stream routes: refusals before the stream, subscribe, until it ends

Beside them: read_batcher (new subscribers read together), open_connections (every socket and
stream, subscribed or not: what the heartbeat pings and a shutdown closes), heartbeat and
expiry_timer (one ping round and one token-expiry timer for every socket), socket_limits (per
subject and per socket).
"""
