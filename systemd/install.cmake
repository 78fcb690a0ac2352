# Run by `cmake --install' (cmake_install.cmake includes it after setting
# the HSMJWT_* variables): the unit files, the tmpfiles snippet and the
# sample configuration.  The units are configured here, not at configure
# time, so that they name the paths of the prefix being installed to — the
# configured one or `cmake --install --prefix DIR' — and ExecStart= always
# names the hsmjwtd this install put down.  DESTDIR stages them without
# changing what they name.

# rel is a GNUInstallDirs value: relative means under the prefix.
function(hsmjwt_install_dir out rel)
  if(IS_ABSOLUTE "${rel}")
    set(dir "${rel}")
  else()
    set(dir "${CMAKE_INSTALL_PREFIX}/${rel}")
  endif()
  string(REGEX REPLACE "/+" "/" dir "${dir}")
  string(REGEX REPLACE "(.)/$" "\\1" dir "${dir}")
  set(${out} "${dir}" PARENT_SCOPE)
endfunction()

string(REGEX REPLACE "(.)/+$" "\\1" hsmjwt_prefix "${CMAKE_INSTALL_PREFIX}")
hsmjwt_install_dir(HSMJWT_SBINDIR "${HSMJWT_REL_SBINDIR}")
hsmjwt_install_dir(HSMJWT_DOCDIR "${HSMJWT_REL_DOCDIR}")
hsmjwt_install_dir(hsmjwt_unitdir "${HSMJWT_SYSTEMD_UNITDIR}")
hsmjwt_install_dir(hsmjwt_tmpfilesdir "${HSMJWT_TMPFILESDIR}")
# GNUInstallDirs' rule: under the prefix /usr (or /) the configuration is
# in /etc, not /usr/etc.
if(NOT IS_ABSOLUTE "${HSMJWT_REL_SYSCONFDIR}" AND (hsmjwt_prefix STREQUAL "/usr" OR hsmjwt_prefix STREQUAL "/"))
  set(HSMJWT_CONFDIR "/${HSMJWT_REL_SYSCONFDIR}/hsmjwt")
else()
  hsmjwt_install_dir(HSMJWT_CONFDIR "${HSMJWT_REL_SYSCONFDIR}/hsmjwt")
endif()

set(hsmjwt_work "${HSMJWT_BINARY_DIR}/install-units")
configure_file("${HSMJWT_SOURCE_DIR}/systemd/hsmjwtd.service.in" "${hsmjwt_work}/hsmjwtd.service" @ONLY)
configure_file("${HSMJWT_SOURCE_DIR}/systemd/hsmjwt.tmpfiles.in" "${hsmjwt_work}/hsmjwt.conf" @ONLY)
file(INSTALL DESTINATION "${hsmjwt_unitdir}" TYPE FILE
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
     FILES "${hsmjwt_work}/hsmjwtd.service" "${HSMJWT_SOURCE_DIR}/systemd/hsmjwtd.socket")
file(INSTALL DESTINATION "${hsmjwt_tmpfilesdir}" TYPE FILE
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
     FILES "${hsmjwt_work}/hsmjwt.conf")

# The operator's configuration survives a reinstall; the pristine sample
# is in the documentation directory either way.
if(EXISTS "$ENV{DESTDIR}${HSMJWT_CONFDIR}/hsmjwt.conf")
  message(STATUS "Keeping: $ENV{DESTDIR}${HSMJWT_CONFDIR}/hsmjwt.conf "
                 "(the sample is ${HSMJWT_DOCDIR}/hsmjwt.conf.sample)")
else()
  file(INSTALL DESTINATION "${HSMJWT_CONFDIR}" TYPE FILE RENAME hsmjwt.conf
       PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
       FILES "${HSMJWT_SOURCE_DIR}/etc/hsmjwt.conf.sample")
endif()
