package topology_test

import (
	"testing"

	"github.com/vitalproxy/vitalproxy/test/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
