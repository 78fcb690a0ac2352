#include "hsmjwt/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "hsmjwt/hsm.h"
#include "hsmjwt/pin.h"

/* A config file is a handful of lines; anything bigger is a mistake. */
#define CONFIG_MAX_FILE    (1024 * 1024)
/* Longest value of any key (paths, URLs, pkcs11: URIs). */
#define CONFIG_MAX_VALUE   4096
/* Ten years: longer than any sane lifetime, and far enough from INT64_MAX that
 * now + ttl can never overflow. */
#define CONFIG_MAX_SECONDS INT64_C(315360000)
#define CONFIG_MAX_WORKERS 64
#define CONFIG_ENV_PREFIX  "HSMJWT_"

struct config_key;
typedef int (*config_setter)(struct config *cfg, const struct config_key *key, const char *value,
			     char *err, size_t errlen);

enum config_int_kind { CONFIG_INT64, CONFIG_UNSIGNED, CONFIG_SIZE };

struct config_key {
	const char *name;
	config_setter set;
	size_t offset;               /* of the field in struct config */
	enum config_int_kind kind;   /* integers */
	int64_t min, max;            /* integers */
	int optional;                /* strings: "" unsets the key */
};

static void config_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void config_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* A value as it may appear inside `...' in a one-line message: control
 * characters become '?', and long values are cut. */
static const char *config_show(char *buf, size_t n, const char *value, size_t len)
{
	size_t o = 0, i;

	for (i = 0; i < len && o + 4 < n; i++) {
		unsigned char c = (unsigned char)value[i];
		buf[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	if (i < len && n >= 4) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = '\0';
	return buf;
}

/* The string fields, so that copy and free cannot forget one. */
static const size_t config_string_fields[] = {
	offsetof(struct config, issuer),        offsetof(struct config, default_audience),
	offsetof(struct config, pkcs11_module), offsetof(struct config, token),
	offsetof(struct config, pin_file),      offsetof(struct config, pin),
	offsetof(struct config, state_dir),     offsetof(struct config, authorization_endpoint),
	offsetof(struct config, log_file),
};
#define CONFIG_STRING_COUNT (sizeof(config_string_fields) / sizeof(config_string_fields[0]))

static char **config_field_str(struct config *cfg, size_t offset)
{
	return (char **)(void *)((char *)cfg + offset);
}

static void config_free_string(struct config *cfg, size_t offset)
{
	char **p = config_field_str(cfg, offset);

	if (*p && offset == offsetof(struct config, pin))
		OPENSSL_cleanse(*p, strlen(*p));
	free(*p);
	*p = NULL;
}

void config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < CONFIG_STRING_COUNT; i++)
		config_free_string(cfg, config_string_fields[i]);
	OPENSSL_cleanse(cfg, sizeof(*cfg));
}

/* Deep copy, so that a parse can fail without touching the caller's config. */
int config_copy(struct config *dst, const struct config *src)
{
	*dst = *src;
	for (size_t i = 0; i < CONFIG_STRING_COUNT; i++) {
		char **p = config_field_str(dst, config_string_fields[i]);
		if (*p == NULL)
			continue;
		*p = strdup(*p);
		if (*p == NULL) {
			for (size_t j = i + 1; j < CONFIG_STRING_COUNT; j++)
				*config_field_str(dst, config_string_fields[j]) = NULL;
			config_free(dst);
			return -ENOMEM;
		}
	}
	return 0;
}

/* Moves src into dst, freeing what dst held. */
static void config_replace(struct config *dst, struct config *src)
{
	config_free(dst);
	*dst = *src;
	memset(src, 0, sizeof(*src));
}

int config_init_defaults(struct config *cfg)
{
	static const struct { size_t offset; const char *value; } strings[] = {
		{ offsetof(struct config, issuer), "http://127.0.0.1:8080" },
		{ offsetof(struct config, default_audience), "api" },
		{ offsetof(struct config, pkcs11_module), HSMJWT_DEFAULT_MODULE },
		{ offsetof(struct config, token), "hsmjwt-dev" },
		{ offsetof(struct config, state_dir), "./var" },
	};
	struct config c;
	long cpus;

	memset(&c, 0, sizeof(c));
	for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
		char **p = config_field_str(&c, strings[i].offset);
		*p = strdup(strings[i].value);
		if (*p == NULL) {
			config_free(&c);
			return -ENOMEM;
		}
	}
	snprintf(c.listen[0].host, sizeof(c.listen[0].host), "127.0.0.1");
	c.listen[0].port = 8080;
	c.listen_count = 1;
	c.algorithms[0] = JWS_ALG_ES256;
	c.algorithm_count = 1;
	c.rsa_bits = 3072;
	c.access_ttl = 3600;
	c.refresh_ttl = 2592000;
	c.id_ttl = 3600;
	c.parent_ttl = 2592000;
	c.child_ttl = 900;
	c.max_ttl = 2592000;
	c.renew_before = 120;
	c.leeway = 30;
	c.rotation_period = 7776000;
	c.publish_ahead = 3600;
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	c.workers = cpus < 1 ? 1 : cpus > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS : (unsigned)cpus;
	c.max_body = 65536;
	c.rate_limit = 0;
	c.max_connections = 10000;
	c.max_connections_per_address = CONFIG_PER_ADDRESS_UNSET;
	c.fsync_always = 1;
	c.log_level = LOG_LEVEL_INFO;
	*cfg = c;
	return 0;
}

/* ---- values ---------------------------------------------------------- */

static int config_has_control(const char *value)
{
	for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return 1;
	}
	return 0;
}

/* Decimal only: no sign but '-', no whitespace, no 0x, no trailing text, and
 * the whole int64 range checked. */
static int config_parse_int(const char *value, int64_t *ret)
{
	const char *p = value[0] == '-' ? value + 1 : value;
	long long v;
	char *end;

	if (*p < '0' || *p > '9')
		return -EINVAL;
	errno = 0;
	v = strtoll(value, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (errno != 0 || *end != '\0')
		return -EINVAL;
	*ret = v;
	return 0;
}

static int config_set_int(struct config *cfg, const struct config_key *key, const char *value,
			  char *err, size_t errlen)
{
	char shown[80];
	int64_t v = 0;
	void *field = (char *)cfg + key->offset;
	int r;

	r = config_parse_int(value, &v);
	if (r == -EINVAL) {
		config_errf(err, errlen, "%s: `%s' is not a decimal integer", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)));
		return -EINVAL;
	}
	if (r < 0 || v < key->min || v > key->max) {
		config_errf(err, errlen, "%s: `%s' is out of range (%lld..%lld)", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)),
			    (long long)key->min, (long long)key->max);
		return -EINVAL;
	}
	/* RSA moduli of a whole number of bytes: signatures are exactly bits/8
	 * octets long (RFC 8017), which every JOSE library and HSM handles;
	 * multiples of 1024 would refuse sizes like 3584 that tokens support. */
	if (key->offset == offsetof(struct config, rsa_bits) && v % 8 != 0) {
		config_errf(err, errlen, "%s: `%s' is not a multiple of 8", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)));
		return -EINVAL;
	}
	switch (key->kind) {
	case CONFIG_INT64: *(int64_t *)field = v; break;
	case CONFIG_UNSIGNED: *(unsigned *)field = (unsigned)v; break;
	case CONFIG_SIZE: *(size_t *)field = (size_t)v; break;
	}
	return 0;
}

/* An absolute http(s) URL with a host and without fragment or spaces; a
 * query only where query_ok. */
static int config_check_url(const char *value, int query_ok, const char **ret_why)
{
	const char *host;

	if (strncmp(value, "https://", 8) == 0)
		host = value + 8;
	else if (strncmp(value, "http://", 7) == 0)
		host = value + 7;
	else {
		*ret_why = "does not start with http:// or https://";
		return -EINVAL;
	}
	if (*host == '\0' || strchr("/?#", *host) != NULL) {
		*ret_why = "has no host";
		return -EINVAL;
	}
	if (strpbrk(value, query_ok ? "# \t" : "?# \t")) {
		*ret_why = query_ok ? "contains a fragment or a space" : "contains a query, a fragment or a space";
		return -EINVAL;
	}
	return 0;
}

/* Replaces the string key names with a copy of value; the old value is
 * freed (and wiped, for the PIN) only once the copy exists. */
static int config_replace_string(struct config *cfg, const struct config_key *key, const char *value,
				 char *err, size_t errlen)
{
	char *copy = strdup(value);

	if (copy == NULL) {
		config_errf(err, errlen, "%s: out of memory", key->name);
		return -ENOMEM;
	}
	config_free_string(cfg, key->offset);
	*config_field_str(cfg, key->offset) = copy;
	return 0;
}

static int config_set_string(struct config *cfg, const struct config_key *key, const char *value,
			     char *err, size_t errlen)
{
	char shown[80];
	const char *why = NULL;

	if (*value == '\0') {
		if (!key->optional) {
			config_errf(err, errlen, "%s: must not be empty", key->name);
			return -EINVAL;
		}
		config_free_string(cfg, key->offset);
		return 0;
	}
	if (strlen(value) > CONFIG_MAX_VALUE) {
		config_errf(err, errlen, "%s: `%s' is longer than %d bytes", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)), CONFIG_MAX_VALUE);
		return -EINVAL;
	}
	if (config_has_control(value)) {
		config_errf(err, errlen, "%s: `%s' contains a control character", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)));
		return -EINVAL;
	}
	/* RFC 8414 §2: the issuer has no query or fragment, and relying
	 * parties compare it byte for byte; an authorization endpoint may
	 * carry a query, never a fragment (RFC 6749 §3.1). */
	if ((key->offset == offsetof(struct config, issuer) && config_check_url(value, 0, &why) < 0) ||
	    (key->offset == offsetof(struct config, authorization_endpoint) && config_check_url(value, 1, &why) < 0)) {
		config_errf(err, errlen, "%s: `%s' %s", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)), why);
		return -EINVAL;
	}
	/* The token string is logged by the HSM layer; a PIN inside it would be
	 * logged too.  The value is not shown for the same reason. */
	if (key->offset == offsetof(struct config, token) && strncmp(value, "pkcs11:", 7) == 0 &&
	    strcasestr(value, "pin-value") != NULL) {
		config_errf(err, errlen, "%s: a pkcs11: URI with pin-value is refused (value not shown); "
			    "use pin_file or pin-source", key->name);
		return -EINVAL;
	}
	return config_replace_string(cfg, key, value, err, errlen);
}

/* Never shows the value: every message here is about the PIN itself. */
static int config_set_pin(struct config *cfg, const struct config_key *key, const char *value,
			  char *err, size_t errlen)
{
	size_t len = strlen(value);

	if (len == 0) {
		config_free_string(cfg, key->offset);
		return 0;
	}
	if (len > PIN_MAX) {
		config_errf(err, errlen, "%s: value is longer than %d bytes (value not shown)", key->name,
			    PIN_MAX);
		return -EINVAL;
	}
	return config_replace_string(cfg, key, value, err, errlen);
}

static int config_host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
	       c == '-' || c == '_';
}

/* "host:port" or "[v6]:port" in s[0..len); a static reason on error. */
static int config_parse_address(const char *s, size_t len, struct config_listen *ret, const char **ret_why)
{
	struct config_listen a;
	const char *host, *port;
	size_t host_len, port_len;
	unsigned long p = 0;

	memset(&a, 0, sizeof(a));
	if (len > 0 && s[0] == '[') {
		const char *close = memchr(s, ']', len);
		char addr[INET6_ADDRSTRLEN + 1];
		struct in6_addr in6;
		size_t addr_len;

		if (close == NULL || close + 1 == s + len || close[1] != ':') {
			*ret_why = "an IPv6 address is written [address]:port";
			return -EINVAL;
		}
		host = s + 1;
		host_len = (size_t)(close - host);
		port = close + 2;
		/* A zone ("%eth0") is allowed after the address itself. */
		addr_len = host_len;
		for (size_t i = 0; i < host_len; i++) {
			if (host[i] == '%') {
				addr_len = i;
				break;
			}
		}
		for (size_t i = addr_len + 1; i < host_len; i++) {
			if (!config_host_char(host[i])) {
				*ret_why = "bad IPv6 zone";
				return -EINVAL;
			}
		}
		if (addr_len == 0 || addr_len >= sizeof(addr) || (addr_len < host_len && addr_len + 1 == host_len)) {
			*ret_why = "not an IPv6 address";
			return -EINVAL;
		}
		memcpy(addr, host, addr_len);
		addr[addr_len] = '\0';
		if (inet_pton(AF_INET6, addr, &in6) != 1) {
			*ret_why = "not an IPv6 address";
			return -EINVAL;
		}
	} else {
		const char *colon = memchr(s, ':', len);

		if (colon == NULL) {
			*ret_why = "no :port";
			return -EINVAL;
		}
		if (memchr(colon + 1, ':', len - (size_t)(colon + 1 - s))) {
			*ret_why = "an IPv6 address needs brackets: [address]:port";
			return -EINVAL;
		}
		host = s;
		host_len = (size_t)(colon - s);
		port = colon + 1;
		if (host_len == 0) {
			*ret_why = "no host (use 0.0.0.0 or [::] for every address)";
			return -EINVAL;
		}
		for (size_t i = 0; i < host_len; i++) {
			if (!config_host_char(host[i])) {
				*ret_why = "bad character in the host";
				return -EINVAL;
			}
		}
	}
	if (host_len >= sizeof(a.host)) {
		*ret_why = "host name too long";
		return -EINVAL;
	}
	port_len = len - (size_t)(port - s);
	if (port_len == 0 || port_len > 5) {
		*ret_why = "the port is not a number from 1 to 65535";
		return -EINVAL;
	}
	for (size_t i = 0; i < port_len; i++) {
		if (port[i] < '0' || port[i] > '9') {
			*ret_why = "the port is not a number from 1 to 65535";
			return -EINVAL;
		}
		p = p * 10 + (unsigned long)(port[i] - '0');
	}
	if (p < 1 || p > 65535) {
		*ret_why = "the port is not a number from 1 to 65535";
		return -EINVAL;
	}
	memcpy(a.host, host, host_len);
	a.host[host_len] = '\0';
	a.port = (uint16_t)p;
	*ret = a;
	return 0;
}

static int config_is_space(char c)
{
	return c == ' ' || c == '\t';
}

static int config_set_listen(struct config *cfg, const struct config_key *key, const char *value,
			     char *err, size_t errlen)
{
	struct config_listen list[CONFIG_MAX_LISTEN];
	size_t count = 0, len = strlen(value);
	const char *p = value, *end = value + len;
	char shown[80];

	if (strcmp(value, "systemd") == 0) {
		cfg->listen_systemd = 1;
		cfg->listen_count = 0;
		return 0;
	}
	for (;;) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *item_end = comma ? comma : end, *why = NULL;
		size_t item_len;

		while (p < item_end && config_is_space(*p))
			p++;
		item_len = (size_t)(item_end - p);
		while (item_len > 0 && config_is_space(p[item_len - 1]))
			item_len--;
		if (item_len == 0) {
			config_errf(err, errlen, "%s: `%s' has an empty address", key->name,
				    config_show(shown, sizeof(shown), value, len));
			return -EINVAL;
		}
		if (count == CONFIG_MAX_LISTEN) {
			config_errf(err, errlen, "%s: `%s' has more than %d addresses", key->name,
				    config_show(shown, sizeof(shown), value, len), CONFIG_MAX_LISTEN);
			return -EINVAL;
		}
		if (config_parse_address(p, item_len, &list[count], &why) < 0) {
			config_errf(err, errlen, "%s: `%s': %s", key->name,
				    config_show(shown, sizeof(shown), p, item_len), why);
			return -EINVAL;
		}
		for (size_t i = 0; i < count; i++) {
			if (list[i].port == list[count].port && strcmp(list[i].host, list[count].host) == 0) {
				config_errf(err, errlen, "%s: `%s' is listed twice", key->name,
					    config_show(shown, sizeof(shown), p, item_len));
				return -EINVAL;
			}
		}
		count++;
		if (comma == NULL)
			break;
		p = comma + 1;
	}
	memcpy(cfg->listen, list, count * sizeof(list[0]));
	cfg->listen_count = count;
	cfg->listen_systemd = 0;
	return 0;
}

static int config_set_admin_listen(struct config *cfg, const struct config_key *key, const char *value,
				   char *err, size_t errlen)
{
	struct config_listen a;
	const char *why = NULL;
	char shown[80];

	if (*value == '\0') {
		memset(&cfg->admin_listen, 0, sizeof(cfg->admin_listen));
		cfg->admin_listen_set = 0;
		return 0;
	}
	if (strchr(value, ',') || strcmp(value, "systemd") == 0) {
		config_errf(err, errlen, "%s: `%s' is not a single host:port or [ipv6]:port", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)));
		return -EINVAL;
	}
	if (config_parse_address(value, strlen(value), &a, &why) < 0) {
		config_errf(err, errlen, "%s: `%s': %s", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)), why);
		return -EINVAL;
	}
	cfg->admin_listen = a;
	cfg->admin_listen_set = 1;
	return 0;
}

static int config_set_algorithms(struct config *cfg, const struct config_key *key, const char *value,
				 char *err, size_t errlen)
{
	enum jws_alg algs[CONFIG_MAX_ALGS];
	size_t count = 0;
	const char *p = value;
	char shown[80], name[16];

	for (;;) {
		size_t n;
		enum jws_alg alg = JWS_ALG_INVALID;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '\0')
			break;
		n = strcspn(p, " \t,");
		/* Names are exact (RFC 7518); the hsm module says which ones this
		 * build can keep keys for. */
		if (n < sizeof(name)) {
			memcpy(name, p, n);
			name[n] = '\0';
			if (jws_alg_from_name(name, &alg) < 0)
				alg = JWS_ALG_INVALID;
		}
		if (alg == JWS_ALG_INVALID || !hsm_alg_supported(alg)) {
			config_errf(err, errlen, "%s: `%s' is not one of ES256 ES384 RS256 PS256 EdDSA HS256", key->name,
				    config_show(shown, sizeof(shown), p, n));
			return -EINVAL;
		}
		for (size_t i = 0; i < count; i++) {
			if (algs[i] == alg) {
				config_errf(err, errlen, "%s: `%s' is listed twice", key->name,
					    config_show(shown, sizeof(shown), p, n));
				return -EINVAL;
			}
		}
		if (count == CONFIG_MAX_ALGS) {
			config_errf(err, errlen, "%s: more than %d algorithms", key->name, CONFIG_MAX_ALGS);
			return -EINVAL;
		}
		algs[count++] = alg;
		p += n;
	}
	if (count == 0) {
		config_errf(err, errlen, "%s: `%s' names no algorithm", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)));
		return -EINVAL;
	}
	memcpy(cfg->algorithms, algs, count * sizeof(algs[0]));
	cfg->algorithm_count = count;
	return 0;
}

static int config_set_fsync(struct config *cfg, const struct config_key *key, const char *value,
			    char *err, size_t errlen)
{
	char shown[80];

	if (strcmp(value, "always") == 0)
		cfg->fsync_always = 1;
	else if (strcmp(value, "interval") == 0)
		cfg->fsync_always = 0;
	else {
		config_errf(err, errlen, "%s: `%s' is not always or interval", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)));
		return -EINVAL;
	}
	return 0;
}

static int config_set_log_level(struct config *cfg, const struct config_key *key, const char *value,
				char *err, size_t errlen)
{
	enum log_level level;
	char shown[80];

	if (log_level_from_name(value, &level) < 0) {
		config_errf(err, errlen, "%s: `%s' is not one of error warn info debug", key->name,
			    config_show(shown, sizeof(shown), value, strlen(value)));
		return -EINVAL;
	}
	cfg->log_level = level;
	return 0;
}

/* Empty: back to the default computed from max_connections. */
static int config_set_per_address(struct config *cfg, const struct config_key *key, const char *value,
				  char *err, size_t errlen)
{
	const struct config_key bounded = { key->name, config_set_int,
					    offsetof(struct config, max_connections_per_address),
					    CONFIG_UNSIGNED, 0, 1000000, 0 };

	if (value[0] == '\0') {
		cfg->max_connections_per_address = CONFIG_PER_ADDRESS_UNSET;
		return 0;
	}
	return config_set_int(cfg, &bounded, value, err, errlen);
}

unsigned config_per_address(const struct config *cfg)
{
	if (cfg->max_connections_per_address != CONFIG_PER_ADDRESS_UNSET)
		return cfg->max_connections_per_address;
	/* Under 16 there is nothing to keep back: one client may need them
	 * all (a proxy in front of the daemon is one address). */
	return cfg->max_connections - cfg->max_connections / 16;
}

#define KEY_STR(n, opt)           { #n, config_set_string, offsetof(struct config, n), CONFIG_INT64, 0, 0, opt }
#define KEY_INT(n, kind, lo, hi)  { #n, config_set_int, offsetof(struct config, n), kind, lo, hi, 0 }
#define KEY_FN(n, fn)             { #n, fn, 0, CONFIG_INT64, 0, 0, 0 }

static const struct config_key config_keys[] = {
	KEY_FN(listen, config_set_listen),
	KEY_FN(admin_listen, config_set_admin_listen),
	KEY_STR(issuer, 0),
	KEY_STR(authorization_endpoint, 1),
	KEY_STR(default_audience, 0),
	KEY_STR(pkcs11_module, 0),
	KEY_STR(token, 0),
	KEY_STR(pin_file, 1),
	{ "pin", config_set_pin, offsetof(struct config, pin), CONFIG_INT64, 0, 0, 1 },
	KEY_STR(state_dir, 0),
	KEY_FN(algorithms, config_set_algorithms),
	KEY_INT(rsa_bits, CONFIG_UNSIGNED, 2048, 8192),
	KEY_INT(access_ttl, CONFIG_INT64, 1, CONFIG_MAX_SECONDS),
	KEY_INT(refresh_ttl, CONFIG_INT64, 1, CONFIG_MAX_SECONDS),
	KEY_INT(id_ttl, CONFIG_INT64, 1, CONFIG_MAX_SECONDS),
	KEY_INT(parent_ttl, CONFIG_INT64, 1, CONFIG_MAX_SECONDS),
	KEY_INT(child_ttl, CONFIG_INT64, 1, CONFIG_MAX_SECONDS),
	KEY_INT(max_ttl, CONFIG_INT64, 60, CONFIG_MAX_SECONDS),
	KEY_INT(renew_before, CONFIG_INT64, 0, CONFIG_MAX_SECONDS),
	KEY_INT(leeway, CONFIG_INT64, 0, 300),
	KEY_INT(rotation_period, CONFIG_INT64, 0, CONFIG_MAX_SECONDS),
	KEY_INT(publish_ahead, CONFIG_INT64, 0, CONFIG_MAX_SECONDS),
	KEY_INT(workers, CONFIG_UNSIGNED, 1, CONFIG_MAX_WORKERS),
	KEY_INT(max_body, CONFIG_SIZE, 1024, 16 * 1024 * 1024),
	KEY_INT(rate_limit, CONFIG_UNSIGNED, 0, 1000000),
	KEY_INT(max_connections, CONFIG_UNSIGNED, 1, 1000000),
	KEY_FN(max_connections_per_address, config_set_per_address),
	KEY_FN(fsync, config_set_fsync),
	KEY_FN(log_level, config_set_log_level),
	KEY_STR(log_file, 1),
};

static const struct config_key *config_find_key(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(config_keys) / sizeof(config_keys[0]); i++) {
		if (strlen(config_keys[i].name) == len && memcmp(config_keys[i].name, name, len) == 0)
			return &config_keys[i];
	}
	return NULL;
}

int config_set(struct config *cfg, const char *key, const char *value, char *err, size_t errlen)
{
	const struct config_key *k = config_find_key(key, strlen(key));
	char shown[80];

	if (k == NULL) {
		config_errf(err, errlen, "unknown key `%s'", config_show(shown, sizeof(shown), key, strlen(key)));
		return -EINVAL;
	}
	return k->set(cfg, k, value, err, errlen);
}

/* ---- file ------------------------------------------------------------ */

/* One `key = value` line (without its newline) applied to cfg.  Messages
 * never quote the value of the line itself: only a setter knows whether the
 * key is the PIN. */
static int config_parse_line(struct config *cfg, const char *line, size_t len, char *err, size_t errlen)
{
	const struct config_key *key;
	const char *p = line, *end = line + len, *name;
	size_t name_len;
	char *value = NULL, shown[80];
	size_t vlen = 0, cap;
	int r = -EINVAL;

	if (memchr(line, '\0', len)) {
		config_errf(err, errlen, "NUL byte in the line");
		return -EINVAL;
	}
	if (len > 0 && line[len - 1] == '\r')
		end--;
	while (p < end && config_is_space(*p))
		p++;
	if (p == end || *p == '#')
		return 0;
	name = p;
	while (p < end && !config_is_space(*p) && *p != '=')
		p++;
	name_len = (size_t)(p - name);
	key = config_find_key(name, name_len);
	while (p < end && config_is_space(*p))
		p++;
	if (p == end || *p != '=' || name_len == 0) {
		if (key)
			config_errf(err, errlen, "%s: expected `key = value'", key->name);
		else
			config_errf(err, errlen, "expected `key = value'");
		return -EINVAL;
	}
	if (key == NULL) {
		config_errf(err, errlen, "unknown key `%s'", config_show(shown, sizeof(shown), name, name_len));
		return -EINVAL;
	}
	p++;
	while (p < end && config_is_space(*p))
		p++;
	/* The value can never be longer than the rest of the line. */
	cap = (size_t)(end - p) + 1;
	value = malloc(cap);
	if (value == NULL) {
		config_errf(err, errlen, "%s: out of memory", key->name);
		return -ENOMEM;
	}
	if (p < end && *p == '"') {
		/* Quoted: \" and \\ are the only escapes; '#' is literal inside. */
		for (p++;; p++) {
			if (p == end) {
				config_errf(err, errlen, "%s: missing closing quote", key->name);
				goto out;
			}
			if (*p == '"')
				break;
			if (*p == '\\') {
				if (p + 1 == end || (p[1] != '"' && p[1] != '\\')) {
					config_errf(err, errlen, "%s: only \\\" and \\\\ may follow a backslash in quotes",
						    key->name);
					goto out;
				}
				p++;
			}
			value[vlen++] = *p;
		}
		for (p++; p < end && config_is_space(*p); p++)
			;
		if (p < end && *p != '#') {
			config_errf(err, errlen, "%s: text after the closing quote", key->name);
			goto out;
		}
	} else {
		/* Unquoted: a '#' starts a comment only after whitespace, so that
		 * "a#b" stays one value. */
		const char *q = p;
		for (; q < end; q++) {
			if (*q == '#' && config_is_space(q[-1]))
				break;
		}
		while (q > p && config_is_space(q[-1]))
			q--;
		vlen = (size_t)(q - p);
		memcpy(value, p, vlen);
	}
	value[vlen] = '\0';
	r = key->set(cfg, key, value, err, errlen);
out:
	/* The value may be the PIN. */
	OPENSSL_cleanse(value, cap);
	free(value);
	return r;
}

int config_parse_buffer(struct config *cfg, const char *buf, size_t len, const char *origin,
			char *err, size_t errlen)
{
	struct config work;
	char inner[512];
	size_t pos = 0, lineno = 0;
	int r;

	if (origin == NULL)
		origin = "config";
	r = config_copy(&work, cfg);
	if (r < 0) {
		config_errf(err, errlen, "%s: out of memory", origin);
		return r;
	}
	while (pos < len) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		size_t line_end = nl ? (size_t)(nl - buf) : len;

		lineno++;
		inner[0] = '\0';
		r = config_parse_line(&work, buf + pos, line_end - pos, inner, sizeof(inner));
		if (r < 0) {
			config_errf(err, errlen, "%s:%zu: %s", origin, lineno, inner);
			config_free(&work);
			return r;
		}
		pos = nl ? line_end + 1 : len;
	}
	config_replace(cfg, &work);
	return 0;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = -errno;
		config_errf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return r;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		config_errf(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		config_errf(err, errlen, "%s: not a regular file", path);
		goto out;
	}
	if (st.st_size > CONFIG_MAX_FILE) {
		r = -EFBIG;
		config_errf(err, errlen, "%s: larger than %d bytes", path, CONFIG_MAX_FILE);
		goto out;
	}
	/* One spare byte tells a file that grew since fstat from one that fits. */
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		r = -ENOMEM;
		config_errf(err, errlen, "%s: out of memory", path);
		goto out;
	}
	for (;;) {
		ssize_t n = read(fd, buf + len, (size_t)st.st_size + 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			config_errf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > (size_t)st.st_size) {
			r = -EAGAIN;
			config_errf(err, errlen, "%s: changed while being read", path);
			goto out;
		}
	}
	r = config_parse_buffer(cfg, buf, len, path, err, errlen);
out:
	if (buf) {
		/* The file may hold the development pin. */
		OPENSSL_cleanse(buf, len);
		free(buf);
	}
	close(fd);
	return r;
}

/* ---- environment ----------------------------------------------------- */

int config_apply_env(struct config *cfg, char *const *envp, char *err, size_t errlen)
{
	const size_t prefix_len = strlen(CONFIG_ENV_PREFIX);
	struct config work;
	char inner[512], shown[80];
	int r;

	if (envp == NULL)
		return 0;
	r = config_copy(&work, cfg);
	if (r < 0) {
		config_errf(err, errlen, "environment: out of memory");
		return r;
	}
	for (char *const *e = envp; *e; e++) {
		const char *var = *e, *eq = strchr(var, '='), *name = var + prefix_len;
		const struct config_key *key = NULL;
		size_t name_len;

		if (strncmp(var, CONFIG_ENV_PREFIX, prefix_len) != 0 || eq == NULL)
			continue;
		name_len = (size_t)(eq - name);
		/* HSMJWT_<KEY> with the key upper-cased, exactly. */
		for (size_t i = 0; i < sizeof(config_keys) / sizeof(config_keys[0]) && !key; i++) {
			const char *k = config_keys[i].name;
			size_t j = 0;

			if (strlen(k) != name_len)
				continue;
			while (j < name_len && ((k[j] >= 'a' && k[j] <= 'z') ? k[j] - 'a' + 'A' : k[j]) == name[j])
				j++;
			if (j == name_len)
				key = &config_keys[i];
		}
		if (key == NULL) {
			config_errf(err, errlen, "environment: %s names no configuration key",
				    config_show(shown, sizeof(shown), var, (size_t)(eq - var)));
			r = -EINVAL;
			goto out;
		}
		inner[0] = '\0';
		r = key->set(&work, key, eq + 1, inner, sizeof(inner));
		if (r < 0) {
			config_errf(err, errlen, "environment %s%s: %s", CONFIG_ENV_PREFIX,
				    config_show(shown, sizeof(shown), name, name_len), inner);
			goto out;
		}
	}
	config_replace(cfg, &work);
	return 0;
out:
	config_free(&work);
	return r;
}

/* ---- cross-key checks ------------------------------------------------ */

int config_validate(const struct config *cfg, char *err, size_t errlen)
{
	const struct { const char *name; int64_t value; } lifetimes[] = {
		{ "access_ttl", cfg->access_ttl }, { "refresh_ttl", cfg->refresh_ttl },
		{ "id_ttl", cfg->id_ttl },         { "parent_ttl", cfg->parent_ttl },
		{ "child_ttl", cfg->child_ttl },
	};
	const struct { const char *name; const char *value; } required[] = {
		{ "issuer", cfg->issuer },     { "default_audience", cfg->default_audience },
		{ "pkcs11_module", cfg->pkcs11_module }, { "token", cfg->token },
		{ "state_dir", cfg->state_dir },
	};

	if (cfg->listen_count == 0 && !cfg->listen_systemd) {
		config_errf(err, errlen, "listen: no address");
		return -EINVAL;
	}
	if (cfg->admin_listen_set) {
		for (size_t i = 0; i < cfg->listen_count; i++) {
			if (cfg->listen[i].port == cfg->admin_listen.port &&
			    strcmp(cfg->listen[i].host, cfg->admin_listen.host) == 0) {
				config_errf(err, errlen, "admin_listen: `%s:%u' is also a listen address",
					    cfg->admin_listen.host, cfg->admin_listen.port);
				return -EINVAL;
			}
		}
	}
	if (cfg->max_connections < cfg->workers) {
		config_errf(err, errlen, "max_connections: %u is fewer than one per worker (workers = %u)",
			    cfg->max_connections, cfg->workers);
		return -EINVAL;
	}
	if (cfg->max_connections_per_address != CONFIG_PER_ADDRESS_UNSET &&
	    cfg->max_connections_per_address > cfg->max_connections) {
		config_errf(err, errlen, "max_connections_per_address: %u is above max_connections (%u)",
			    cfg->max_connections_per_address, cfg->max_connections);
		return -EINVAL;
	}
	if (cfg->algorithm_count == 0 || cfg->algorithm_count > CONFIG_MAX_ALGS) {
		config_errf(err, errlen, "algorithms: at least one algorithm is needed");
		return -EINVAL;
	}
	if (cfg->rsa_bits < 2048) {
		config_errf(err, errlen, "rsa_bits: %u is below 2048", cfg->rsa_bits);
		return -EINVAL;
	}
	for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
		if (required[i].value == NULL) {
			config_errf(err, errlen, "%s: not set", required[i].name);
			return -EINVAL;
		}
	}
	for (size_t i = 0; i < sizeof(lifetimes) / sizeof(lifetimes[0]); i++) {
		if (lifetimes[i].value < 1 || lifetimes[i].value > cfg->max_ttl) {
			config_errf(err, errlen, "%s: %lld is not between 1 and max_ttl (%lld)", lifetimes[i].name,
				    (long long)lifetimes[i].value, (long long)cfg->max_ttl);
			return -EINVAL;
		}
	}
	/* Otherwise a parent's next child would be due before the current one
	 * was even issued, and an auto-renewed parent renewed more often than
	 * once per renew_before (POST /token-pairs holds child_expires_in to
	 * the same floor). */
	if (cfg->renew_before < 0 || cfg->renew_before > cfg->child_ttl / 2) {
		config_errf(err, errlen, "renew_before: %lld is more than half of child_ttl (%lld)",
			    (long long)cfg->renew_before, (long long)cfg->child_ttl);
		return -EINVAL;
	}
	/* A rotation shorter than publish_ahead would start the next key before
	 * the previous one signs. */
	if (cfg->rotation_period != 0 && cfg->rotation_period < cfg->publish_ahead) {
		config_errf(err, errlen, "rotation_period: %lld is shorter than publish_ahead (%lld); 0 = manual",
			    (long long)cfg->rotation_period, (long long)cfg->publish_ahead);
		return -EINVAL;
	}
	return 0;
}

/* SPEC §5.1: ID tokens are RS256 unless a request names another alg, and
 * discovery must list RS256 (OIDC Discovery §3) — so an RS256 key is kept
 * whatever `algorithms` says, after the configured ones: it is never the
 * default for other tokens. */
static void config_keep_id_token_alg(struct config *cfg)
{
	for (size_t i = 0; i < cfg->algorithm_count; i++)
		if (cfg->algorithms[i] == JWS_ALG_RS256)
			return;
	/* Duplicates are refused, so six distinct algorithms leave no room
	 * only when RS256 is already among them. */
	if (cfg->algorithm_count < CONFIG_MAX_ALGS)
		cfg->algorithms[cfg->algorithm_count++] = JWS_ALG_RS256;
}

int config_load(struct config *cfg, const char *path, char *const *envp, char *err, size_t errlen)
{
	struct config work;
	int r;

	r = config_init_defaults(&work);
	if (r < 0) {
		config_errf(err, errlen, "out of memory");
		return r;
	}
	if (path && (r = config_load_file(&work, path, err, errlen)) < 0)
		goto fail;
	if ((r = config_apply_env(&work, envp, err, errlen)) < 0)
		goto fail;
	if ((r = config_validate(&work, err, errlen)) < 0)
		goto fail;
	config_keep_id_token_alg(&work);
	*cfg = work;
	return 0;
fail:
	config_free(&work);
	return r;
}
