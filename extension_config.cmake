# Extension configuration, as DuckDB extension repositories have it. pocaduck is built with cargo
# (scripts/build.sh), not with DuckDB's CMake; this file names the extension and where it lives
# for tooling that reads it.
duckdb_extension_load(pocaduck
    SOURCE_DIR ${CMAKE_CURRENT_LIST_DIR}
    LOAD_TESTS
)
