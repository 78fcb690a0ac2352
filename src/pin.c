#include "hsmjwt/pin.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <p11-kit/uri.h>

#include "hsmjwt/log.h"

void pin_forget(struct config *cfg)
{
	if (cfg->pin == NULL)
		return;
	OPENSSL_cleanse(cfg->pin, strlen(cfg->pin));
	free(cfg->pin);
	cfg->pin = NULL;
}

void pin_free(char *pin, size_t len)
{
	if (pin == NULL)
		return;
	OPENSSL_cleanse(pin, len);
	free(pin);
}

/* Reads a PIN file: at most PIN_MAX bytes, one trailing "\n" or "\r\n"
 * dropped.  Never logs the content. */
static int pin_read_file(const char *path, char **ret_pin, size_t *ret_len)
{
	char buf[PIN_MAX + 1];
	struct stat st;
	size_t len = 0;
	char *pin;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		r = errno;
		log_error("\"cannot open the PIN file\" path=%s error=\"%s\"", path, strerror(r));
		/* -ENOENT means "no PIN source configured" to the caller; a
		 * configured file that is missing is an error. */
		return r == ENOENT ? -EIO : -r;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		log_error("\"the PIN file is not a regular file\" path=%s", path);
		r = -EINVAL;
		goto out;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO))
		log_warn("\"the PIN file is accessible by group or others\" path=%s mode=%04o", path,
			 (unsigned)(st.st_mode & 07777));
	for (;;) {
		ssize_t n = read(fd, buf + len, sizeof(buf) - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			log_error("\"cannot read the PIN file\" path=%s error=\"%s\"", path, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > PIN_MAX) {
			log_error("\"the PIN file is longer than %d bytes\" path=%s", PIN_MAX, path);
			r = -EFBIG;
			goto out;
		}
	}
	if (len >= 2 && buf[len - 2] == '\r' && buf[len - 1] == '\n')
		len -= 2;
	else if (len >= 1 && buf[len - 1] == '\n')
		len -= 1;
	if (len == 0) {
		log_error("\"the PIN file holds an empty PIN\" path=%s", path);
		r = -EINVAL;
		goto out;
	}
	if (memchr(buf, '\0', len)) {
		log_error("\"the PIN file holds a NUL byte\" path=%s", path);
		r = -EINVAL;
		goto out;
	}
	pin = malloc(len + 1);
	if (pin == NULL) {
		r = -ENOMEM;
		goto out;
	}
	memcpy(pin, buf, len);
	pin[len] = '\0';
	*ret_pin = pin;
	*ret_len = len;
	r = 0;
out:
	OPENSSL_cleanse(buf, sizeof(buf));
	close(fd);
	return r;
}

int pin_uri_source(const char *token, char *ret_path, size_t size)
{
	P11KitUri *uri = NULL;
	const char *source;
	size_t len;
	int r = -ENOENT;

	if (token == NULL || strncmp(token, "pkcs11:", 7) != 0)
		return -ENOENT;
	uri = p11_kit_uri_new();
	if (uri == NULL)
		return -ENOMEM;
	if (p11_kit_uri_parse(token, P11_KIT_URI_FOR_ANY, uri) != P11_KIT_URI_OK) {
		/* hsm_open names the bad URI when it tries to use it. */
		goto out;
	}
	source = p11_kit_uri_get_pin_source(uri);
	if (source == NULL)
		goto out;
	if (strncmp(source, "file:", 5) == 0)
		source += 5;
	if (source[0] != '/') {
		log_error("\"pin-source must be an absolute file path or file: URI\" pin_source=%s", source);
		r = -EINVAL;
		goto out;
	}
	len = strlen(source);
	if (len >= size) {
		log_error("\"pin-source path is too long\" pin_source=%s", source);
		r = -ENAMETOOLONG;
		goto out;
	}
	memcpy(ret_path, source, len + 1);
	r = 0;
out:
	p11_kit_uri_free(uri);
	return r;
}

/* RFC 7512 lets the token URI name where its PIN lives
 * ("pkcs11:token=x?pin-source=file:/etc/hsmjwt/pin"), so one string can
 * describe a production token completely.  -ENOENT when token is a label or
 * its URI names no pin-source. */
static int pin_read_uri_source(const char *token, char **ret_pin, size_t *ret_len)
{
	char path[PATH_MAX];
	int r;

	r = pin_uri_source(token, path, sizeof(path));
	if (r < 0)
		return r;
	return pin_read_file(path, ret_pin, ret_len);
}

int pin_read(const struct config *cfg, char **ret_pin, size_t *ret_len)
{
	const char *creds = getenv("CREDENTIALS_DIRECTORY");
	char path[PATH_MAX];
	size_t len;
	char *pin;
	int r;

	if (cfg->pin_file)
		return pin_read_file(cfg->pin_file, ret_pin, ret_len);
	if (creds && *creds) {
		struct stat st;

		if ((size_t)snprintf(path, sizeof(path), "%s/pin", creds) >= sizeof(path)) {
			log_error("\"CREDENTIALS_DIRECTORY is too long\"");
			return -ENAMETOOLONG;
		}
		/* systemd sets the directory for any credential; only a "pin"
		 * credential makes it the PIN source. */
		if (lstat(path, &st) == 0)
			return pin_read_file(path, ret_pin, ret_len);
	}
	r = pin_read_uri_source(cfg->token, ret_pin, ret_len);
	if (r != -ENOENT)
		return r;
	if (cfg->pin == NULL)
		return -ENOENT;
	log_warn("\"using the development-only pin key; set pin_file or a systemd credential in production\"");
	len = strlen(cfg->pin);
	if (len == 0) {
		log_error("\"the pin key is empty\"");
		return -EINVAL;
	}
	pin = malloc(len + 1);
	if (pin == NULL)
		return -ENOMEM;
	memcpy(pin, cfg->pin, len + 1);
	*ret_pin = pin;
	*ret_len = len;
	return 0;
}
