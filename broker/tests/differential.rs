//! The same scripted sessions against a real redis-server 7 and against
//! limpet-broker; every reply byte must match.
//!
//! Script lines: `N> ARGS...` sends a multibulk command from client N
//! (arguments split on spaces), `N! TEXT` sends raw bytes (`\r\n`, `\xHH`
//! escapes), `N? K` reads K frames from client N, `N.` reads client N until
//! the server closes it. A `>`/`!` line may end with `| N:K ...` to read
//! frames right after sending. Only values that legitimately differ are
//! masked: the server version and connection ids in HELLO.

mod common;
use common::*;
use std::net::SocketAddr;

const SESSIONS: &[(&str, &str)] = &[
    (
        "every new command with the wrong arity, every family on every other type",
        r"0> DEL | 0:1
0> UNLINK | 0:1
0> EXISTS | 0:1
0> TYPE x x | 0:1
0> TYPE | 0:1
0> EXPIRE x | 0:1
0> PEXPIRE x | 0:1
0> EXPIREAT x | 0:1
0> PEXPIREAT x | 0:1
0> TTL x x | 0:1
0> TTL | 0:1
0> PTTL x x | 0:1
0> PTTL | 0:1
0> PERSIST x x | 0:1
0> PERSIST | 0:1
0> KEYS x x | 0:1
0> KEYS | 0:1
0> SCAN | 0:1
0> DBSIZE extra | 0:1
0> SET x | 0:1
0> GET x x | 0:1
0> GET | 0:1
0> GETDEL x x | 0:1
0> GETDEL | 0:1
0> GETEX | 0:1
0> MGET | 0:1
0> MSET x | 0:1
0> INCR x x | 0:1
0> INCR | 0:1
0> INCRBY x x x | 0:1
0> INCRBY x | 0:1
0> DECR x x | 0:1
0> DECR | 0:1
0> DECRBY x x x | 0:1
0> DECRBY x | 0:1
0> APPEND x x x | 0:1
0> APPEND x | 0:1
0> STRLEN x x | 0:1
0> STRLEN | 0:1
0> HSET x x | 0:1
0> HSETNX x x x x | 0:1
0> HSETNX x x | 0:1
0> HGET x x x | 0:1
0> HGET x | 0:1
0> HMGET x | 0:1
0> HGETALL x x | 0:1
0> HGETALL | 0:1
0> HDEL x | 0:1
0> HLEN x x | 0:1
0> HLEN | 0:1
0> HEXISTS x x x | 0:1
0> HEXISTS x | 0:1
0> HKEYS x x | 0:1
0> HKEYS | 0:1
0> HVALS x x | 0:1
0> HVALS | 0:1
0> HINCRBY x x x x | 0:1
0> HINCRBY x x | 0:1
0> SADD x | 0:1
0> SREM x | 0:1
0> SMEMBERS x x | 0:1
0> SMEMBERS | 0:1
0> SISMEMBER x x x | 0:1
0> SISMEMBER x | 0:1
0> SMISMEMBER x | 0:1
0> SCARD x x | 0:1
0> SCARD | 0:1
0> XADD x x x | 0:1
0> XREAD x x | 0:1
0> XRANGE x x | 0:1
0> XREVRANGE x x | 0:1
0> XLEN x x | 0:1
0> XLEN | 0:1
0> XDEL x | 0:1
0> XTRIM x x | 0:1
0> MULTI extra | 0:1
0> EXEC extra | 0:1
0> DISCARD extra | 0:1
0> WATCH | 0:1
0> UNWATCH extra | 0:1
0> SET str v | 0:1
0> HSET hash f v | 0:1
0> SADD set m | 0:1
0> XADD stream 1-1 f v | 0:1
0> GET hash | 0:1
0> GETDEL hash | 0:1
0> GETEX hash | 0:1
0> INCR hash | 0:1
0> DECRBY hash 1 | 0:1
0> APPEND hash x | 0:1
0> STRLEN hash | 0:1
0> SET hash v GET | 0:1
0> GET set | 0:1
0> GETDEL set | 0:1
0> GETEX set | 0:1
0> INCR set | 0:1
0> DECRBY set 1 | 0:1
0> APPEND set x | 0:1
0> STRLEN set | 0:1
0> SET set v GET | 0:1
0> GET stream | 0:1
0> GETDEL stream | 0:1
0> GETEX stream | 0:1
0> INCR stream | 0:1
0> DECRBY stream 1 | 0:1
0> APPEND stream x | 0:1
0> STRLEN stream | 0:1
0> SET stream v GET | 0:1
0> HSET str f v | 0:1
0> HSETNX str f v | 0:1
0> HGET str f | 0:1
0> HMGET str f | 0:1
0> HGETALL str | 0:1
0> HDEL str f | 0:1
0> HLEN str | 0:1
0> HEXISTS str f | 0:1
0> HKEYS str | 0:1
0> HVALS str | 0:1
0> HINCRBY str f 1 | 0:1
0> HSET set f v | 0:1
0> HSETNX set f v | 0:1
0> HGET set f | 0:1
0> HMGET set f | 0:1
0> HGETALL set | 0:1
0> HDEL set f | 0:1
0> HLEN set | 0:1
0> HEXISTS set f | 0:1
0> HKEYS set | 0:1
0> HVALS set | 0:1
0> HINCRBY set f 1 | 0:1
0> HSET stream f v | 0:1
0> HSETNX stream f v | 0:1
0> HGET stream f | 0:1
0> HMGET stream f | 0:1
0> HGETALL stream | 0:1
0> HDEL stream f | 0:1
0> HLEN stream | 0:1
0> HEXISTS stream f | 0:1
0> HKEYS stream | 0:1
0> HVALS stream | 0:1
0> HINCRBY stream f 1 | 0:1
0> SADD str m | 0:1
0> SREM str m | 0:1
0> SMEMBERS str | 0:1
0> SISMEMBER str m | 0:1
0> SMISMEMBER str m | 0:1
0> SCARD str | 0:1
0> SADD hash m | 0:1
0> SREM hash m | 0:1
0> SMEMBERS hash | 0:1
0> SISMEMBER hash m | 0:1
0> SMISMEMBER hash m | 0:1
0> SCARD hash | 0:1
0> SADD stream m | 0:1
0> SREM stream m | 0:1
0> SMEMBERS stream | 0:1
0> SISMEMBER stream m | 0:1
0> SMISMEMBER stream m | 0:1
0> SCARD stream | 0:1
0> XADD str * f v | 0:1
0> XLEN str | 0:1
0> XRANGE str - + | 0:1
0> XREVRANGE str + - | 0:1
0> XDEL str 1-1 | 0:1
0> XTRIM str MAXLEN 0 | 0:1
0> XREAD STREAMS str 0 | 0:1
0> XINFO STREAM str | 0:1
0> XADD hash * f v | 0:1
0> XLEN hash | 0:1
0> XRANGE hash - + | 0:1
0> XREVRANGE hash + - | 0:1
0> XDEL hash 1-1 | 0:1
0> XTRIM hash MAXLEN 0 | 0:1
0> XREAD STREAMS hash 0 | 0:1
0> XINFO STREAM hash | 0:1
0> XADD set * f v | 0:1
0> XLEN set | 0:1
0> XRANGE set - + | 0:1
0> XREVRANGE set + - | 0:1
0> XDEL set 1-1 | 0:1
0> XTRIM set MAXLEN 0 | 0:1
0> XREAD STREAMS set 0 | 0:1
0> XINFO STREAM set | 0:1
0> TYPE str | 0:1
0> TYPE hash | 0:1
0> TYPE set | 0:1
0> TYPE stream | 0:1
0> SCAN 0 TYPE stream | 0:1
0> SCAN 0 TYPE hash MATCH h* | 0:1
0> FLUSHALL | 0:1",
    ),
    (
        "CLIENT REPLY, CLIENT KILL TYPE/USER, COMMAND LIST FILTERBY, COMMAND INFO publish",
        r"0> CLIENT REPLY FOO | 0:1
0> CLIENT REPLY | 0:1
0> CLIENT REPLY OFF
0> SET r 1
0> GET r
0> NOSUCH
0> CLIENT REPLY ON | 0:1
0> CLIENT REPLY SKIP
0> GET r
0> GET r | 0:1
0> CLIENT REPLY OFF
0> CLIENT REPLY SKIP
0> PING
0> CLIENT REPLY ON | 0:1
0> PING | 0:1
0> CLIENT REPLY SKIP
0> XREAD BLOCK 0 STREAMS skipped 0
1> XADD skipped 1-1 a 1 | 1:1
0> PING | 0:1
0> DEL skipped | 0:1
0> CLIENT KILL TYPE foo | 0:1
0> CLIENT KILL USER foo | 0:1
0> CLIENT KILL TYPE master | 0:1
0> CLIENT KILL TYPE replica | 0:1
0> CLIENT KILL TYPE pubsub | 0:1
0> CLIENT KILL USER default TYPE master | 0:1
0> COMMAND LIST FILTERBY PATTERN xadd | 0:1
0> COMMAND LIST FILTERBY PATTERN config|s* | 0:1
0> COMMAND LIST FILTERBY MODULE x | 0:1
0> COMMAND LIST FILTERBY ACLCAT nosuch | 0:1
0> COMMAND LIST FILTERBY FOO x | 0:1
0> COMMAND LIST FILTERBY PATTERN | 0:1
0> COMMAND LIST FOO | 0:1
0> COMMAND INFO publish | 0:1
0> DEL r | 0:1
3> HELLO 3 | 3:1
3> SUBSCRIBE pushch | 3:1
3> XREAD BLOCK 0 STREAMS pushzz 0
1> PUBLISH pushch hello | 1:1 3:1
1> XADD pushzz 1-1 f v | 1:1 3:1
3> UNSUBSCRIBE | 3:1
1> DEL pushzz | 1:1",
    ),
    (
        "keyspace notifications, CONFIG SET, maxmemory",
        r"1> PSUBSCRIBE __key* | 1:1
0> CONFIG SET notify-keyspace-events KQ | 0:1
0> CONFIG SET notify-keyspace-events KEA | 0:1
0> CONFIG GET notify-keyspace-events | 0:1
0> SET k v | 0:1 1:2
0> SET k v EX 100 | 0:1 1:4
0> EXPIRE k 50 | 0:1 1:2
0> PERSIST k | 0:1 1:2
0> PERSIST k | 0:1
0> DEL k | 0:1 1:2
0> DEL k | 0:1
0> INCR n | 0:1 1:2
0> INCRBY n 5 | 0:1 1:2
0> DECR n | 0:1 1:2
0> APPEND n x | 0:1 1:2
0> HSET h a 1 | 0:1 1:2
0> HSETNX h a 1 | 0:1
0> HINCRBY h b 1 | 0:1 1:2
0> HDEL h a b | 0:1 1:4
0> SADD s a | 0:1 1:2
0> SADD s a | 0:1
0> SREM s a | 0:1 1:4
0> XADD x 1-1 f v | 0:1 1:2
0> XADD x MAXLEN 0 2-1 f v | 0:1 1:4
0> XADD x 3-1 f v | 0:1 1:2
0> XDEL x 3-1 | 0:1 1:2
0> XDEL x 3-1 | 0:1
0> XADD x 4-1 f v | 0:1 1:2
0> XTRIM x MAXLEN 0 | 0:1 1:2
0> GETDEL n | 0:1 1:2
0> MSET a 1 b 2 | 0:1 1:4
0> GETEX a EX 100 | 0:1 1:2
0> GETEX a PERSIST | 0:1 1:2
0> EXPIRE a 0 | 0:1 1:2
0> SET e v PXAT 1 | 0:1 1:4
0> GET e | 0:1 1:2
0> SET p online PX 1 | 0:1 1:4
1? 2
0> MULTI | 0:1
0> SET m 1 | 0:1
0> HSET mh f v | 0:1
0> EXEC | 0:1 1:4
0> CONFIG SET notify-keyspace-events Ex | 0:1
0> SET q v PX 1 | 0:1
1? 1
0> CONFIG SET notify-keyspace-events A | 0:1
0> FLUSHALL | 0:1
0> CONFIG SET maxmemory x | 0:1
0> CONFIG SET foo bar | 0:1
0> CONFIG SET maxmemory 1 maxmemory 2 | 0:1
0> CONFIG SET a b c | 0:1
0> CONFIG SET maxmemory-policy foo | 0:1
0> CONFIG SET maxmemory-policy noeviction | 0:1
0> CONFIG GET maxmemory-policy | 0:1
0> SET pre x | 0:1
0> CONFIG SET maxmemory 1 | 0:1
0> SET big value | 0:1
0> SET big2 value | 0:1
0> GET big | 0:1
0> DEL big | 0:1
0> MULTI | 0:1
0> SET big3 v | 0:1
0> EXEC | 0:1
0> CONFIG SET maxmemory 0 | 0:1
0> CONFIG GET maxmemory | 0:1
0> FLUSHALL | 0:1",
    ),
    (
        "streams, transactions, XREAD BLOCK woken by XADD from another client",
        r"0> FLUSHALL | 0:1
0> XADD s 1-1 a 1 | 0:1
0> XADD s 1-1 a 1 | 0:1
0> XADD s 1-0 a 1 | 0:1
0> XADD s 0-0 a 1 | 0:1
0> XADD s 1-* b 2 | 0:1
0> XADD s 2-* c 3 | 0:1
0> XADD s 2 d 4 | 0:1
0> XADD s 3-5 e 5 f 6 | 0:1
0> XADD s 4-1 odd | 0:1
0> XADD s 4-1 | 0:1
0> XADD s | 0:1
0> XADD s x a 1 | 0:1
0> XADD s 18446744073709551615-18446744073709551616 a 1 | 0:1
0> XADD s NOMKSTREAM | 0:1
0> XADD nos NOMKSTREAM 1-1 a 1 | 0:1
0> EXISTS nos | 0:1
0> XADD s MAXLEN | 0:1
0> XADD s MAXLEN x 9-1 a 1 | 0:1
0> XADD s MAXLEN -1 9-1 a 1 | 0:1
0> XADD s MAXLEN 10 MINID 0 9-1 a 1 | 0:1
0> XADD s LIMIT 5 9-1 a 1 | 0:1
0> XADD s MAXLEN 3 LIMIT 5 9-1 a 1 | 0:1
0> XADD s MAXLEN ~ 3 LIMIT -1 9-1 a 1 | 0:1
0> XADD s MINID x 9-1 a 1 | 0:1
0> XLEN s | 0:1
0> XRANGE s - + | 0:1
0> XRANGE s - + COUNT 2 | 0:1
0> XRANGE s - + COUNT 0 | 0:1
0> XRANGE s - + COUNT -1 | 0:1
0> XRANGE s - + COUNT x | 0:1
0> XRANGE s - + FOO | 0:1
0> XRANGE s (1-1 + | 0:1
0> XRANGE s (1-1 (3-5 | 0:1
0> XRANGE s 2 2 | 0:1
0> XRANGE s + - | 0:1
0> XRANGE s x + | 0:1
0> XRANGE s (- + | 0:1
0> XRANGE s - (+ | 0:1
0> XRANGE s (18446744073709551615-18446744073709551615 + | 0:1
0> XRANGE s - (0-0 | 0:1
0> XRANGE nokey - + | 0:1
0> XREVRANGE s + - | 0:1
0> XREVRANGE s + - COUNT 1 | 0:1
0> XREVRANGE s (3-5 - | 0:1
0> XDEL s 2-0 99-0 | 0:1
0> XDEL s x | 0:1
0> XDEL nokey x | 0:1
0> XLEN s | 0:1
0> XLEN nokey | 0:1
0> XTRIM s | 0:1
0> XTRIM s MAXLEN | 0:1
0> XTRIM s MAXLEN 2 | 0:1
0> XRANGE s - + | 0:1
0> XTRIM s MINID 3-5 | 0:1
0> XTRIM s FOO 1 | 0:1
0> XTRIM s MAXLEN ~ 0 | 0:1
0> XTRIM s MAXLEN = 0 LIMIT 1 | 0:1
0> XTRIM nokey MAXLEN 0 | 0:1
0> XLEN s | 0:1
0> SET str x | 0:1
0> XADD str * a 1 | 0:1
0> XLEN str | 0:1
0> XRANGE str - + | 0:1
0> XREAD STREAMS str 0 | 0:1
0> XDEL str 1-1 | 0:1
0> XTRIM str MAXLEN 1 | 0:1
0> XINFO STREAM str | 0:1
0> XINFO STREAM nokey | 0:1
0> XREAD | 0:1
0> XREAD STREAMS | 0:1
0> XREAD STREAMS s | 0:1
0> XREAD COUNT x STREAMS s 0 | 0:1
0> XREAD BLOCK -1 STREAMS s 0 | 0:1
0> XREAD BLOCK x STREAMS s 0 | 0:1
0> XREAD FOO STREAMS s 0 | 0:1
0> XREAD STREAMS s x | 0:1
0> XREAD STREAMS s > | 0:1
0> XREAD GROUP g c STREAMS s 0 | 0:1
0> XREAD NOACK STREAMS s 0 | 0:1
0> XREAD STREAMS s nokey 0 0 | 0:1
0> XREAD STREAMS s $ | 0:1
0> XREAD BLOCK 10 STREAMS s $ | 0:1
0> XREAD COUNT 1 STREAMS s 0 | 0:1
0> XADD t 5-0 a 1 | 0:1
0> XADD t 6-0 b 2 | 0:1
0> XREAD STREAMS s t 0 0 | 0:1
0> XREAD COUNT 1 STREAMS s t 0 5 | 0:1
0> XREAD BLOCK 100 STREAMS s t 0 0 | 0:1
0> XREAD STREAMS t 18446744073709551615-18446744073709551615 | 0:1
0> XADD big 1 a 1 | 0:1
0> XADD big 2 a 1 | 0:1
0> XADD big 3 a 1 | 0:1
0> XADD big 4 a 1 | 0:1
0> XADD big 5 a 1 | 0:1
0> XADD big MAXLEN 2 6 a 1 | 0:1
0> XLEN big | 0:1
0> XADD big MINID 5 7 a 1 | 0:1
0> XRANGE big - + | 0:1
0> XINFO STREAM big | 0:1
0> XDEL big 6 7 | 0:1
0> XINFO STREAM big | 0:1
0> XINFO STREAM big FULL | 0:1
0> XINFO GROUPS big | 0:1
0> MULTI | 0:1
0> SET a 1 | 0:1
0> GET a | 0:1
0> INCR a | 0:1
0> XADD big 9 a 1 | 0:1
0> EXEC | 0:1
0> MULTI | 0:1
0> SET a | 0:1
0> GET a | 0:1
0> EXEC | 0:1
0> MULTI | 0:1
0> NOSUCH x | 0:1
0> EXEC | 0:1
0> EXEC | 0:1
0> DISCARD | 0:1
0> MULTI | 0:1
0> MULTI | 0:1
0> WATCH a | 0:1
0> DISCARD | 0:1
0> WATCH a | 0:1
0> SET a 2 | 0:1
0> MULTI | 0:1
0> GET a | 0:1
0> EXEC | 0:1
0> WATCH a | 0:1
0> MULTI | 0:1
0> GET a | 0:1
0> EXEC | 0:1
0> UNWATCH | 0:1
0> MULTI | 0:1
0> XREAD BLOCK 0 STREAMS big $ | 0:1
0> EXEC | 0:1
0> HELLO 3 | 0:1
0> XREAD STREAMS t 0 | 0:1
0> XREAD STREAMS t 9 | 0:1
0> XINFO STREAM big | 0:1
0> XRANGE t - + COUNT 0 | 0:1
0> XINFO STREAM big FULL | 0:1
0> XINFO STREAM big FULL COUNT 0 | 0:1
0> XINFO STREAM big FULL COUNT x | 0:1
0> XINFO STREAM big FOO | 0:1
0> XINFO STREAM big FULL COUNT | 0:1
0> XINFO STREAM big FULL FOO 1 | 0:1
0> XINFO STREAM t | 0:1
0> XINFO STREAM t FULL COUNT 1 | 0:1
0> XINFO | 0:1
0> XINFO FOO | 0:1
0> HELLO 2 | 0:1
0> XREAD BLOCK 0 STREAMS wake 0
1> XADD wake 1-1 a 1 | 1:1 0:1
0> XREAD BLOCK 0 STREAMS wake1 wake2 0 0
1> XADD wake2 5-5 b 2 | 1:1 0:1
0> XREAD BLOCK 0 COUNT 1 STREAMS wake 1-1
1> XADD wake 2-1 c 3 | 1:1 0:1
0> XREAD BLOCK 50 STREAMS never 0 | 0:1
0> XREAD BLOCK 0 STREAMS wake 2-1
1> SET other 1 | 1:1
1> XADD wake 3-1 d 4 | 1:1 0:1
0> PING | 0:1
2> HELLO 3 | 2:1
2> XREAD BLOCK 0 STREAMS r3 0
1> XADD r3 1-1 x y | 1:1 2:1
2> XREAD BLOCK 30 STREAMS r3 $ | 2:1
0> FLUSHALL | 0:1",
    ),
    (
        "keyspace: strings, hashes, sets, expiry, wrong types and arity",
        r"0> FLUSHALL | 0:1
0> SET k v | 0:1
0> GET k | 0:1
0> GET nokey | 0:1
0> SET k v2 NX | 0:1
0> SET k v3 XX | 0:1
0> GET k | 0:1
0> SET k v GET | 0:1
0> SET k2 v GET | 0:1
0> SET k v EX 10 PX 100 | 0:1
0> SET k v EX 10 EX 20 | 0:1
0> TTL k | 0:1
0> SET k v EX 0 | 0:1
0> SET k v EX -1 | 0:1
0> SET k v EX x | 0:1
0> SET k v PX 9223372036854775807 | 0:1
0> SET k v EX 9223372036854775 | 0:1
0> SET k v KEEPTTL EX 10 | 0:1
0> SET k v NX XX | 0:1
0> SET k v FOO | 0:1
0> SET k v KEEPTTL | 0:1
0> TTL k | 0:1
0> SET k v | 0:1
0> TTL k | 0:1
0> PTTL nokey | 0:1
0> EXPIRE k 100 | 0:1
0> TTL k | 0:1
0> EXPIRE k 100 NX | 0:1
0> EXPIRE k 200 XX | 0:1
0> EXPIRE k 50 GT | 0:1
0> EXPIRE k 500 GT | 0:1
0> TTL k | 0:1
0> EXPIRE k 100 NX XX | 0:1
0> EXPIRE k 100 GT LT | 0:1
0> EXPIRE k 100 FOO | 0:1
0> EXPIRE k x | 0:1
0> EXPIRE k 9223372036854775807 | 0:1
0> PEXPIRE k 9223372036854775807 | 0:1
0> EXPIREAT k 1 | 0:1
0> EXISTS k | 0:1
0> EXPIRE nokey 10 | 0:1
0> SET k v | 0:1
0> PERSIST k | 0:1
0> EXPIRE k 10 | 0:1
0> PERSIST k | 0:1
0> TTL k | 0:1
0> TYPE k | 0:1
0> TYPE nokey | 0:1
0> HSET h a 1 | 0:1
0> TYPE h | 0:1
0> GET h | 0:1
0> INCR h | 0:1
0> HSET h a | 0:1
0> HSET h a 1 b 2 c 3 | 0:1
0> HGETALL h | 0:1
0> HKEYS h | 0:1
0> HVALS h | 0:1
0> HDEL h b zz | 0:1
0> HGETALL h | 0:1
0> HLEN h | 0:1
0> HEXISTS h a | 0:1
0> HEXISTS h b | 0:1
0> HGET h a | 0:1
0> HGET h zz | 0:1
0> HMGET h a zz c | 0:1
0> HINCRBY h a 5 | 0:1
0> HINCRBY h a x | 0:1
0> HSET h s notnum | 0:1
0> HINCRBY h s 1 | 0:1
0> HINCRBY h a 9223372036854775807 | 0:1
0> HSETNX h a 9 | 0:1
0> HSETNX h n 9 | 0:1
0> HGETALL nokey | 0:1
0> HKEYS nokey | 0:1
0> HMGET nokey a b | 0:1
0> HDEL h a c s n | 0:1
0> EXISTS h | 0:1
0> SADD s 3 1 2 | 0:1
0> SMEMBERS s | 0:1
0> SADD s 2 5 | 0:1
0> SCARD s | 0:1
0> SISMEMBER s 2 | 0:1
0> SISMEMBER s 9 | 0:1
0> SMISMEMBER s 1 9 2 | 0:1
0> SREM s 1 9 | 0:1
0> SMEMBERS s | 0:1
0> SMEMBERS nokey | 0:1
0> SADD k x | 0:1
0> SREM s 2 3 5 | 0:1
0> EXISTS s | 0:1
0> SADD single a | 0:1
0> SMEMBERS single | 0:1
0> INCR c | 0:1
0> INCRBY c 10 | 0:1
0> DECR c | 0:1
0> DECRBY c 5 | 0:1
0> DECRBY c -9223372036854775808 | 0:1
0> INCRBY c x | 0:1
0> INCRBY c 9223372036854775807 | 0:1
0> GET c | 0:1
0> APPEND c xyz | 0:1
0> APPEND c2 abc | 0:1
0> STRLEN c2 | 0:1
0> STRLEN nokey | 0:1
0> STRLEN h | 0:1
0> MSET a 1 b 2 | 0:1
0> MSET a 1 b | 0:1
0> MGET a b nokey h | 0:1
0> GETDEL a | 0:1
0> GETDEL a | 0:1
0> GETEX b | 0:1
0> GETEX b EX 100 | 0:1
0> TTL b | 0:1
0> GETEX b PERSIST | 0:1
0> TTL b | 0:1
0> GETEX b EX 10 PERSIST | 0:1
0> GETEX b FOO | 0:1
0> GETEX nokey EX 10 | 0:1
0> GETEX b EX -5 | 0:1
0> GETEX b EXAT 1 | 0:1
0> EXISTS b | 0:1
0> DEL a b c c2 nokey | 0:1
0> UNLINK k | 0:1
0> EXISTS k k single | 0:1
0> DBSIZE | 0:1
0> KEYS sing* | 0:1
0> SCAN x | 0:1
0> SCAN 0 COUNT 0 | 0:1
0> SCAN 0 COUNT x | 0:1
0> SCAN 0 MATCH s* COUNT 100 | 0:1
0> SCAN 0 TYPE set COUNT 100 | 0:1
0> SCAN 0 FOO bar | 0:1
0> FLUSHDB | 0:1
0> FLUSHDB ASYNC | 0:1
0> FLUSHDB x | 0:1
0> FLUSHALL SYNC x | 0:1
0> DBSIZE | 0:1
0> SET x 1 PXAT 1 | 0:1
0> GET x | 0:1
0> EXISTS x | 0:1
0> TTL x | 0:1
0> SET y 1 | 0:1
0> PEXPIREAT y 1 | 0:1
0> TYPE y | 0:1
0> HELLO 3 | 0:1
0> HSET h a 1 b 2 | 0:1
0> HGETALL h | 0:1
0> HGETALL nokey | 0:1
0> SMEMBERS nokey | 0:1
0> SADD s 1 2 | 0:1
0> SMEMBERS s | 0:1
0> GET nokey | 0:1
0> HMGET h a zz | 0:1
0> SET k v NX | 0:1
0> SET k v NX | 0:1
0> MGET k zz | 0:1
0> FLUSHALL | 0:1
0> GET | 0:1
0> GET a b | 0:1
0> HSET h | 0:1
0> SADD s | 0:1
0> EXPIRE k | 0:1
0> SET k | 0:1
0> MGET | 0:1
0> HGETALL | 0:1
0> SCAN | 0:1
0> DBSIZE x | 0:1",
    ),
    (
        "connection commands",
        r"0> PING | 0:1
0> PING hello | 0:1
0> PING a b | 0:1
0> ECHO | 0:1
0> ECHO x y | 0:1
0> ECHO binary\x00zero | 0:1
0> FOO a b c | 0:1
0> SELECT 0 | 0:1
0> SELECT 16 | 0:1
0> SELECT -1 | 0:1
0> SELECT x | 0:1
0> AUTH pass | 0:1
0> AUTH default pass | 0:1
0> AUTH someone pass | 0:1
0> AUTH a b c | 0:1
0> CLIENT FOO | 0:1
0> CLIENT | 0:1
0> CLIENT GETNAME | 0:1
0! CLIENT SETNAME 'a b'\r\n | 0:1
0> CLIENT SETNAME app | 0:1
0> CLIENT GETNAME | 0:1
0> CLIENT SETNAME | 0:1
0> PUBSUB FOO | 0:1
0> PUBSUB | 0:1
0> HELLO 4 | 0:1
0> HELLO x | 0:1
0> HELLO 3 FOO | 0:1
0> HELLO 2 AUTH default | 0:1
0> CONFIG GET maxclients | 0:1
0> CONFIG GET no-such-thing | 0:1
0> CONFIG | 0:1
0> RESET | 0:1
0> QUIT | 0:1
0.",
    ),
    (
        "pub/sub across clients in RESP2",
        r"0> SUBSCRIBE news sport | 0:2
1> PSUBSCRIBE n* | 1:1
2> PUBLISH news hello | 2:1 0:1 1:1
2> PUBLISH sport goal | 2:1 0:1
2> PUBLISH nope x | 2:1 1:1
2> PUBLISH other x | 2:1
2> PUBSUB NUMSUB news sport nope | 2:1
2> PUBSUB NUMPAT | 2:1
2> PUBSUB CHANNELS s* | 2:1
2> PUBSUB CHANNELS s* n* | 2:1
2> PUBSUB channels a b c | 2:1
2> PUBSUB SHARDCHANNELS a b | 2:1
0> ECHO x | 0:1
0> PING | 0:1
0> PING hi | 0:1
1> PUBLISH news from-subscriber | 1:1
0> UNSUBSCRIBE news | 0:1
2> PUBLISH news again | 2:1 1:1
0> SUBSCRIBE news news | 0:2
1> PUNSUBSCRIBE | 1:1
1> PUNSUBSCRIBE | 1:1
1> UNSUBSCRIBE | 1:1
1> PING | 1:1
0> UNSUBSCRIBE sport | 0:1
0> UNSUBSCRIBE | 0:1
0> UNSUBSCRIBE | 0:1
0> PSUBSCRIBE | 0:1
0> SUBSCRIBE | 0:1
2> PUBLISH a | 2:1
2> PUBSUB CHANNELS | 2:1",
    ),
    (
        "RESP3 pushes and types",
        r"0> HELLO 3 | 0:1
0> SUBSCRIBE room | 0:1
1> PUBLISH room hi | 1:1 0:1
0> PING | 0:1
0> ECHO usable | 0:1
0> CLIENT GETNAME | 0:1
0> CONFIG GET maxclients | 0:1
0> PSUBSCRIBE r?om | 0:1
1> PUBLISH room two | 1:1 0:2
0> UNSUBSCRIBE | 0:1
0> UNSUBSCRIBE | 0:1
0> PUNSUBSCRIBE r?om | 0:1
0> PUBSUB NUMSUB room | 0:1
0> HELLO 2 | 0:1
0> PING | 0:1",
    ),
    (
        "sharded pub/sub",
        r"0> SSUBSCRIBE s1 s2 | 0:2
0> SUBSCRIBE c1 | 0:1
1> SPUBLISH s1 m | 1:1 0:1
1> PUBLISH s1 m | 1:1
1> SPUBLISH c1 m | 1:1
1> PUBSUB SHARDCHANNELS s1 | 1:1
1> PUBSUB SHARDNUMSUB s1 s2 s3 | 1:1
1> PUBSUB NUMSUB s1 | 1:1
0> SUNSUBSCRIBE s1 | 0:1
0> SUNSUBSCRIBE | 0:1
0> SUNSUBSCRIBE | 0:1
0> ECHO x | 0:1
0> UNSUBSCRIBE | 0:1
0> ECHO x | 0:1",
    ),
    (
        "glob patterns",
        r"0> PSUBSCRIBE h[ae]llo | 0:1
1> PSUBSCRIBE h\*llo | 1:1
2> PSUBSCRIBE [^a]x | 2:1
3> PSUBSCRIBE room:*:chat | 3:1
4> PUBLISH hello m | 4:1 0:1
4> PUBLISH hallo m | 4:1 0:1
4> PUBLISH hillo m | 4:1
4> PUBLISH h*llo m | 4:1 1:1
4> PUBLISH bx m | 4:1 2:1
4> PUBLISH ax m | 4:1
4> PUBLISH room:42:chat m | 4:1 3:1
4> PUBLISH room:42:chatx m | 4:1
4> PUBSUB NUMPAT | 4:1",
    ),
    (
        "pipelines and inline commands",
        r"0! PING\r\nECHO a\r\n*2\r\n$4\r\nECHO\r\n$1\r\nb\r\nPING x\r\n\r\nECHO \x22quoted \x5cx41\x22\r\nECHO 'it\x5c's'\r\n | 0:5
0! *0\r\n*-1\r\nPING\r\n | 0:1
1! SUBSCRIBE p\r\nPING\r\nUNSUBSCRIBE p\r\nPING\r\n | 1:4
0! ECHO \x22bad\r\n | 0:1
0.",
    ),
    (
        "invalid multibulk length",
        r"0! *abc\r\n | 0:1
0.",
    ),
    (
        "expected dollar",
        r"0! *1\r\n:1\r\n | 0:1
0.",
    ),
    (
        "negative bulk length",
        r"0! *1\r\n$-1\r\n | 0:1
0.",
    ),
    (
        "bulk length not a number",
        r"0! *1\r\n$x\r\n | 0:1
0.",
    ),
    (
        "huge bulk length",
        r"0! *1\r\n$99999999999\r\n | 0:1
0.",
    ),
    (
        "huge multibulk length",
        r"0! *99999999999\r\n | 0:1
0.",
    ),
];

fn unescape(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b'x' if i + 3 < b.len() => {
                    out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).expect("hex escape"));
                    i += 2;
                }
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Runs one script; returns a readable transcript of everything received.
async fn run_script(addr: SocketAddr, script: &str) -> Vec<String> {
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut transcript = Vec::new();
    for line in script.lines() {
        let line = line.trim();
        let who: usize = line[..1].parse().expect("client index");
        while clients.len() <= who {
            clients.push(None);
        }
        if clients[who].is_none() {
            clients[who] = Some(Client::connect(addr).await);
        }
        let (action, rest) = (line.as_bytes()[1], line[2..].trim());
        let (body, reads) = rest.split_once(" | ").unwrap_or((rest, ""));
        match action {
            b'>' => {
                let args: Vec<String> = body
                    .split(' ')
                    .map(|a| String::from_utf8_lossy(&unescape(a)).into_owned())
                    .collect();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                clients[who].as_mut().unwrap().send(&encode(&args)).await;
            }
            b'!' => clients[who].as_mut().unwrap().send(&unescape(body)).await,
            b'?' => {
                let n: usize = body.parse().unwrap();
                let got = clients[who].as_mut().unwrap().frames(n).await;
                transcript.push(format!("{who} <- {}", mask(&got)));
            }
            b'.' => {
                let got = clients[who].as_mut().unwrap().read_to_close().await;
                transcript.push(format!("{who} closed after {:?}", mask(&got)));
                continue;
            }
            _ => panic!("bad script line {line}"),
        }
        transcript.push(line.to_string());
        for read in reads.split_whitespace() {
            let (c, n) = read.split_once(':').expect("N:K");
            let (c, n): (usize, usize) = (c.parse().unwrap(), n.parse().unwrap());
            let got = clients[c].as_mut().expect("client exists").frames(n).await;
            transcript.push(format!("  {c} <- {}", mask(&got)));
        }
    }
    transcript
}

/// Masks the fields that differ between any two servers: version and ids.
fn mask(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(pos) = rest.find("$7\r\nversion\r\n") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + "$7\r\nversion\r\n".len()..];
        // skip the bulk string that follows
        let hdr_end = after.find("\r\n").unwrap();
        let len: usize = after[1..hdr_end].parse().unwrap();
        out.push_str("$7\r\nversion\r\n<VERSION>");
        rest = &after[hdr_end + 2 + len + 2..];
        if let Some(id_pos) = rest.find("$2\r\nid\r\n:") {
            out.push_str(&rest[..id_pos + "$2\r\nid\r\n:".len()]);
            let after_id = &rest[id_pos + "$2\r\nid\r\n:".len()..];
            let end = after_id.find("\r\n").unwrap();
            out.push_str("<ID>");
            rest = &after_id[end..];
        }
    }
    out.push_str(rest);
    out.replace("\r\n", "\\r\\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_as_redis_server() {
    let redis = RedisServer::start(&[]).await;
    let limpet = TestBroker::default().await;
    let mut failures = Vec::new();
    for (name, script) in SESSIONS {
        let want = run_script(redis.addr, script).await;
        let got = run_script(limpet.addr, script).await;
        if want != got {
            let mut report = format!("session '{name}' differs:\n");
            for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
                if w != g {
                    report.push_str(&format!("  line {i}\n    redis : {w}\n    limpet: {g}\n"));
                }
            }
            if want.len() != got.len() {
                report.push_str(&format!("  lengths {} vs {}\n", want.len(), got.len()));
            }
            failures.push(report);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    limpet.stop().await;
}

/// A fixed-seed xorshift, so a failing script reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// 1,200 random stream operations: XADD with `ms-*` ids, repeated and
/// changing field names, MAXLEN/MINID with `=` and `~`; XDEL, XTRIM,
/// XRANGE/XREVRANGE with exclusive bounds and COUNT, XREAD, XLEN. Node
/// boundaries (what `~` trims) and deleted entries must come out as in
/// Redis.
fn random_stream_script(seed: u64) -> String {
    let mut rng = Rng(seed);
    let mut lines = vec!["0> DEL rs | 0:1".to_string()];
    let mut ms = 1u64;
    for step in 0..1200 {
        let line = match rng.below(100) {
            0..=59 => {
                ms += [0, 1, 1, 2, 50][rng.below(5) as usize];
                let fields = if rng.below(5) == 0 {
                    format!("g {step} h x")
                } else {
                    format!("f v{step}")
                };
                let trim = match rng.below(100) {
                    0..=4 => format!("MAXLEN ~ {} ", rng.below(300)),
                    5..=7 => format!("MAXLEN {} ", 50 + rng.below(350)),
                    8..=9 => format!("MINID ~ {} ", ms.saturating_sub(rng.below(400))),
                    _ => String::new(),
                };
                format!("XADD rs {trim}{ms}-* {fields}")
            }
            60..=74 => format!(
                "XDEL rs {}-{}",
                ms.saturating_sub(rng.below(300)),
                rng.below(2)
            ),
            75..=79 => format!(
                "XTRIM rs MAXLEN {} {}",
                ["~", "="][rng.below(2) as usize],
                rng.below(500)
            ),
            80..=81 => format!(
                "XTRIM rs MINID {} {}",
                ["~", "="][rng.below(2) as usize],
                ms.saturating_sub(rng.below(500))
            ),
            82..=89 => {
                let a = ms.saturating_sub(rng.below(500));
                format!(
                    "XRANGE rs {}{a} {} COUNT {}",
                    ["", "("][rng.below(2) as usize],
                    a + rng.below(300),
                    1 + rng.below(20)
                )
            }
            90..=94 => {
                let a = ms.saturating_sub(rng.below(500));
                format!(
                    "XREVRANGE rs {} ({a} COUNT {}",
                    a + rng.below(300),
                    1 + rng.below(20)
                )
            }
            95..=97 => format!("XREAD COUNT 5 STREAMS rs {}", ms.saturating_sub(100)),
            _ => "XLEN rs".to_string(),
        };
        lines.push(format!("0> {line} | 0:1"));
    }
    lines.push("0> XRANGE rs - + | 0:1".to_string());
    lines.push("0> DEL rs | 0:1".to_string());
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_stream_operations_same_as_redis_server() {
    let redis = RedisServer::start(&[]).await;
    let limpet = TestBroker::default().await;
    for seed in [7, 0x5eed] {
        let script = random_stream_script(seed);
        let want = run_script(redis.addr, &script).await;
        let got = run_script(limpet.addr, &script).await;
        for (w, g) in want.iter().zip(got.iter()) {
            assert_eq!(w, g, "seed {seed}: first difference");
        }
        assert_eq!(want.len(), got.len());
    }
    limpet.stop().await;
}
