/* pin: the token's user PIN — where it comes from, and its end.
 *
 * SPEC §1: read once from a file, a systemd credential or (development only)
 * the pin key; wiped as soon as the login is done; never in argv or a log
 * line.  Every buffer that held it is wiped here, and pin_free() wipes the
 * copy handed out. */
#ifndef HSMJWT_PIN_H
#define HSMJWT_PIN_H

#include <stddef.h>

#include "hsmjwt/config.h"

/* PKCS#11 PINs are short; 256 bytes leaves room for any vendor's passphrase. */
#define PIN_MAX 256

/* Reads the PIN: pin_file, else $CREDENTIALS_DIRECTORY/pin, else the
 * pin-source= of a pkcs11: token URI (RFC 7512), else cfg->pin (logging a
 * warning).  A file holds at most PIN_MAX bytes; one trailing "\n" or "\r\n"
 * is dropped; an empty PIN or a NUL byte is refused.  0 and *ret_pin
 * (malloc'd, NUL-terminated; release it with pin_free), -ENOENT when no
 * source is set (the token may need no login), -EIO when a configured file
 * is missing, or another negative errno. */
int pin_read(const struct config *cfg, char **ret_pin, size_t *ret_len);

/* The file the pin-source= of a pkcs11: token URI names (RFC 7512: an
 * absolute path, or "file:" and one) into ret_path (size bytes,
 * NUL-terminated).  A pure function over the string, for tests and fuzzing.
 * 0; -ENOENT when token is NULL, a label, a URI that does not parse (hsm_open
 * names it) or one without pin-source; -EINVAL (logged) for a relative path
 * or another scheme; -ENAMETOOLONG (logged) when it does not fit; -ENOMEM.
 * ret_path is untouched on failure. */
int pin_uri_source(const char *token, char *ret_path, size_t size);

/* Wipes and drops the development pin key from cfg once the login is done
 * (SPEC §1: the PIN is wiped after login). */
void pin_forget(struct config *cfg);

/* Wipes and frees a PIN from pin_read; NULL is fine. */
void pin_free(char *pin, size_t len);

#endif
