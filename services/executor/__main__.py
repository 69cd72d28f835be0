from services.common.runtime import main
from services.executor.service import build

if __name__ == "__main__":
    main("executor", build)
