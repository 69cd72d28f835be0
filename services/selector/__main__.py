from services.common.runtime import main
from services.selector.service import build

if __name__ == "__main__":
    main("selector", build)
