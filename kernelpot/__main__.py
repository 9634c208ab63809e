from kernelpot.cli import main

raise SystemExit(main())
