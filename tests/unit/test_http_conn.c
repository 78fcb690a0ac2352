/* http_conn_peer_key: the address a connection counts against for
 * max_connections_per_address — an IPv4 address, an IPv6 /64, an
 * IPv4-mapped IPv6 address as its IPv4 address, never the port; the key
 * untouched on failure. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cmocka.h>

#include "../../src/http_internal.h"

static void key_of4(const char *addr, uint16_t port, unsigned char key[HTTP_PEER_KEY])
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, addr, &sin.sin_addr), 1);
	assert_int_equal(http_conn_peer_key((const struct sockaddr *)&sin, sizeof(sin), key), 0);
}

static void key_of6(const char *addr, uint16_t port, unsigned char key[HTTP_PEER_KEY])
{
	struct sockaddr_in6 sin6;

	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	sin6.sin6_port = htons(port);
	assert_int_equal(inet_pton(AF_INET6, addr, &sin6.sin6_addr), 1);
	assert_int_equal(http_conn_peer_key((const struct sockaddr *)&sin6, sizeof(sin6), key), 0);
}

static void test_ipv4(void **state)
{
	unsigned char a[HTTP_PEER_KEY], b[HTTP_PEER_KEY], c[HTTP_PEER_KEY];
	static const unsigned char want[HTTP_PEER_KEY] = { 4, 192, 0, 2, 7 };

	(void)state;
	key_of4("192.0.2.7", 1234, a);
	key_of4("192.0.2.7", 50000, b);
	key_of4("192.0.2.8", 1234, c);
	assert_memory_equal(a, want, HTTP_PEER_KEY);
	/* The port is no part of it; the next address is another key. */
	assert_memory_equal(a, b, HTTP_PEER_KEY);
	assert_memory_not_equal(a, c, HTTP_PEER_KEY);
}

static void test_ipv6_by_64(void **state)
{
	unsigned char a[HTTP_PEER_KEY], b[HTTP_PEER_KEY], c[HTTP_PEER_KEY], d[HTTP_PEER_KEY];
	static const unsigned char want[HTTP_PEER_KEY] = { 6, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00, 0x02 };

	(void)state;
	key_of6("2001:db8:1:2::1", 443, a);
	key_of6("2001:db8:1:2:ffff:ffff:ffff:ffff", 80, b);
	key_of6("2001:db8:1:3::1", 443, c);
	key_of6("2001:db8:1:2:8000::", 443, d);
	assert_memory_equal(a, want, HTTP_PEER_KEY);
	/* Anywhere in one /64: one key; the next /64: another. */
	assert_memory_equal(a, b, HTTP_PEER_KEY);
	assert_memory_equal(a, d, HTTP_PEER_KEY);
	assert_memory_not_equal(a, c, HTTP_PEER_KEY);
}

static void test_v4_mapped(void **state)
{
	unsigned char mapped[HTTP_PEER_KEY], v4[HTTP_PEER_KEY], compat[HTTP_PEER_KEY], other[HTTP_PEER_KEY];

	(void)state;
	key_of6("::ffff:198.51.100.9", 1, mapped);
	key_of4("198.51.100.9", 2, v4);
	key_of6("::ffff:198.51.100.10", 1, other);
	assert_memory_equal(mapped, v4, HTTP_PEER_KEY);
	/* Not one /64 for every IPv4 client of a dual-stack socket. */
	assert_memory_not_equal(mapped, other, HTTP_PEER_KEY);
	/* ::c633:6409 (no ffff) is an IPv6 address like any other. */
	key_of6("::198.51.100.9", 1, compat);
	assert_int_equal(compat[0], 6);
}

static void test_refused_untouched(void **state)
{
	unsigned char key[HTTP_PEER_KEY], before[HTTP_PEER_KEY];
	struct sockaddr_un sun;
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;

	(void)state;
	memset(key, 0xa5, sizeof(key));
	memcpy(before, key, sizeof(key));
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	assert_int_equal(http_conn_peer_key((const struct sockaddr *)&sun, sizeof(sun), key), -EAFNOSUPPORT);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	assert_int_equal(http_conn_peer_key((const struct sockaddr *)&sin, sizeof(sin) - 1, key), -EAFNOSUPPORT);
	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	assert_int_equal(http_conn_peer_key((const struct sockaddr *)&sin6, sizeof(struct sockaddr_in), key),
			 -EAFNOSUPPORT);
	assert_int_equal(http_conn_peer_key(NULL, 0, key), -EINVAL);
	assert_memory_equal(key, before, sizeof(key));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ipv4),
		cmocka_unit_test(test_ipv6_by_64),
		cmocka_unit_test(test_v4_mapped),
		cmocka_unit_test(test_refused_untouched),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
