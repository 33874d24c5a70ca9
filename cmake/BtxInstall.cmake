# SPDX-License-Identifier: MIT
# install(EXPORT) + package config so that another project can find_package(btx).
include(CMakePackageConfigHelpers)
install(DIRECTORY include/btx DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS btx btx_dist EXPORT btxTargets)
install(EXPORT btxTargets NAMESPACE btx:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/btx)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/btxConfig.cmake.in
  ${PROJECT_BINARY_DIR}/btxConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/btx)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/btxConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/btxConfig.cmake ${PROJECT_BINARY_DIR}/btxConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/btx)
install(FILES LICENSE DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/btx)
